"""Load tests and benchmarks behind ``covidct bench ...``; results feed BENCHMARKS.md.

Every command writes a folder of result files (CSV, JSON, PNG and a Markdown section);
``covidct bench report`` assembles BENCHMARKS.md from those folders.
"""
