"""One module of checks per lab, named after the lab (``01_api_design`` -> ``api_design``).

Each check names the chapter section it tests; ``tests/test_coursekit.py`` makes sure those
sections exist once the chapters are written.
"""
