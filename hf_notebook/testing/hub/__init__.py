"""A local stand-in for the Hugging Face Hub: repos in git on disk, served over the Hub's HTTP API.

Point ``HF_ENDPOINT`` at :attr:`HubServer.endpoint` before importing ``huggingface_hub`` and the
real client (and ``transformers``) talk to it as to the Hub.
"""

from .server import HubServer
from .store import Conflict, EntryNotFound, NotFound, RepoNotFound, RepoStore, RevisionNotFound, folder_files

__all__ = [
    "Conflict",
    "EntryNotFound",
    "HubServer",
    "NotFound",
    "RepoNotFound",
    "RepoStore",
    "RevisionNotFound",
    "folder_files",
]
