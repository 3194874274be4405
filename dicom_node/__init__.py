"""DICOM node for cardiac MR quantification: receive, store, query/retrieve, process, send."""

__version__ = "0.1.0"
