"""Evaluation reports for a model bundle (`shenhe eval`): metrics.json + a self-contained report.html.

Modules: ``data`` (read/validate JSONL), ``metrics`` (numpy metrics on arrays), ``scoring`` (Predictor ->
arrays), ``evaluate`` (assemble metrics.json), ``compare`` (paired bootstrap), ``perturb`` (obfuscations),
``plots`` (matplotlib), ``report`` (jinja2), ``run`` (the pipeline), ``cli`` (the command).
"""
