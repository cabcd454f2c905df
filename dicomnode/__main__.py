"""``python -m dicomnode``: the DICOM node alone, as ``covidct pacs serve`` runs it (the image's
entry point: no command line package needed). Every setting is a ``COVIDCT_PACS_*`` variable
(dicomnode/settings.py); a bad one, or a port that cannot be listened on, exits with status 2
and the variable named."""

from __future__ import annotations

import logging
import sys

from dicomnode.errors import DicomNodeError
from dicomnode.pipeline import serve
from dicomnode.settings import load_settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        serve(load_settings())
    except DicomNodeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
