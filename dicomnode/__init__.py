"""The DICOM node: CT series in from a scanner or a PACS (C-STORE), a coded TID 1500
Structured Report and heatmap Secondary Captures back into the same study.

It stands on the covidct core and talks to the gateway over HTTP; it never imports the
gateway, training, export or TensorFlow (pyproject.toml's import-linter contracts).
"""
