"""Where the speech is: speech detectors (:mod:`.detectors`) and speaker turns given from outside
(:mod:`.turns`).
"""
