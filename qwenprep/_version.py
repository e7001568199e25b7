"""The version of qwenprep, in one place: the package metadata (hatch), `qwenprep.__version__`
and every module that records it (overlay manifests, fetch results) read it from here."""

__version__ = "0.1.0"
