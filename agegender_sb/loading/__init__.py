"""Sources (hub id, folder, savedir) → checked local files → strictly loaded modules; model folders
and their YAML.
"""
