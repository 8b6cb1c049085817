"""Where the tests find real speech: ``../shared/data/speechocean762`` beside the checkout.

``AGEGENDER_SPEECHOCEAN`` overrides the location. Tests that need it skip where it is absent.
"""

import os
from pathlib import Path

#: The repository's root folder.
REPO = Path(__file__).resolve().parents[1]

SPEECHOCEAN = Path(
    os.environ.get(
        "AGEGENDER_SPEECHOCEAN",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "speechocean762",
    )
)
