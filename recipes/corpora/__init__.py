"""Corpus readers for the age/gender data preparation (see ``recipes/prepare.py``).

Each module exposes a ``read_<corpus>(data_folder, ...)`` function that returns a
mapping from split name (``train``, ``valid``, ``test`` or ``all``) to a list of
:class:`corpora.common.Utterance`; splitting, the child rule and writing are done
centrally by ``prepare.prepare``.
"""
