"""The deployment side: one frozen backbone in memory, many verified site adapters.

``store`` (versioned adapter store), ``integrity`` (what a stored adapter must prove; the backbone guard),
``bank`` (AdapterBank: residency, routing per row), ``worker`` (micro-batching inference thread),
``server`` (``tpp serve``: HTTP), ``predict`` (``tpp predict``: files to CSV) and ``images`` (image readers
for inference, with pixel budgets). Only the CLI and the Python API (``tpp.api.deploy``) import this package;
training never does.
"""
