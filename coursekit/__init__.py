"""Course machinery, kept apart from the server so the server stays copyable on its own.

* ``coursekit.generate``: labs/ from solutions/ (``python -m coursekit labs``);
* ``coursekit.checks`` and ``coursekit.labchecks``: checks that speak to the learner;
* ``coursekit.checkpoint``: the checkpoint log (``machine_info()`` is reusable on its own);
* ``coursekit.report``: ``coursekit checkpoint show|compare|merge``;
* ``coursekit.model``: the embedded model, loaded quietly for notebooks;
* ``coursekit.export``: ``%%export`` cells write the learner's package ``myserver/`` (and
  ``coursekit export`` writes notebooks' cells without running them);
* ``coursekit.lab``: what a lab notebook needs: the package, the app in-process, the server as a
  process (``coursekit.child`` watches it), remote mode.

Nothing is imported here, so ``from coursekit.checkpoint import machine_info`` stays light.
"""

import sys

if "jsonschema" not in sys.modules:  # the parser jsonschema would build for "iri" formats: see reference_server/__init__.py
    sys.modules.setdefault("rfc3987_syntax", None)
