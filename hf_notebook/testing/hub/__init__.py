"""A local stand-in for the Hugging Face Hub: repos in git on disk, served over the Hub's HTTP API.

Point ``HF_ENDPOINT`` at :attr:`HubServer.endpoint` before importing ``huggingface_hub`` and the
real client (and ``transformers``) talk to it as to the Hub, with their defaults: big files go
through Xet storage (the real hf_xet, against a CAS the stand-in keeps and serves), or through the
CAS bridge and LFS for clients without Xet.
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
