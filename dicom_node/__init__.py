"""DICOM node for cardiac MR quantification: receive, store, query/retrieve, process, send.

Modules in the order data flows (the README's "How data flows" draws the same):

- ``scp`` (the SCP: association policy, C-ECHO/C-STORE/C-FIND/C-MOVE/C-GET handlers),
  ``netutil`` (socket tuning and pynetdicom patches), ``tls``, ``status`` (every DIMSE status);
- ``instance`` (checks a received data set) and ``filemeta``; ``store`` (durable files) and
  ``index`` (the SQLite index: studies, series, instances, jobs); ``qr`` (Q/R matching);
- ``series`` (series completion) and ``jobs`` (the durable job queue and its workers);
- ``processing`` (sub-package: classification, loading, the T2 and perfusion pipelines,
  delivery) and ``encode`` (sub-package: the derived DICOM objects);
- ``send`` (C-STORE SCU) and ``audit``; ``health``, ``logs``, ``config``; ``lazy_exports``;
- ``node`` (composes the parts, starts and stops them) and ``cli`` (``dicom-node``);
- ``simulate`` and ``synthetic``: phantom series and synthetic instances for demos and tests;
  ``vendors`` and ``enhanced_mr``: the phantom's T2 study as each vendor writes it.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
