"""One small interface over remote file storage: list, read, write and delete files in a folder
given by URL (s3://, sftp://, ftp://, ftps://, https://, file://).

fsspec does the protocols (s3fs, sshfs over asyncssh, its FTP and HTTP file systems); see
docs/decisions/0012-file-connectors.md. Every connection goes through the outbound policy
(clarion.outbound), checked on the address connected to: see
docs/decisions/0017-outbound-policy.md. Flat-file imports read through it and daily exports
write through it. Calls are blocking (fsspec's FTP file system has no async form), so callers
on the event loop run them with `asyncio.to_thread`; the `Storage` object is not shared
between threads.
"""

from clarion.storage.connector import (
    OBJECT_STORES,
    READ_BLOCK,
    SCHEMES,
    WRITE_BLOCK,
    RemoteFile,
    Storage,
    StorageCredentials,
)
from clarion.storage.failures import StorageError, describe

__all__ = [
    "OBJECT_STORES",
    "READ_BLOCK",
    "SCHEMES",
    "WRITE_BLOCK",
    "RemoteFile",
    "Storage",
    "StorageCredentials",
    "StorageError",
    "describe",
]
