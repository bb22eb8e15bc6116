"""FTP and FTPS for the connectors: fsspec's FTP file system, connected through the outbound
policy, with FTPS that checks the certificate."""

from __future__ import annotations

import ftplib
from typing import Any

from fsspec.implementations.ftp import FTPFileSystem

from clarion.outbound import OutboundPolicy
from clarion.storage.tls import tls_context


class VerifiedFTPFileSystem(FTPFileSystem):
    """fsspec's FTP file system with FTPS that checks the server's certificate (fsspec's own
    does not) and reuses the TLS session on data connections, which servers such as vsftpd
    require by default."""

    def __init__(
        self,
        *args: Any,
        ca_file: str | None = None,
        outbound: OutboundPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        self._ca_file = ca_file
        self._policy = outbound or OutboundPolicy()
        super().__init__(*args, **kwargs)

    def _connect(self) -> None:
        ftp: ftplib.FTP
        if self.tls:
            context = tls_context(self._ca_file)
            ftp = _SessionReusingFTP(context=context, timeout=self.timeout, encoding=self.encoding)
        else:
            ftp = ftplib.FTP(timeout=self.timeout, encoding=self.encoding)
        self.ftp = ftp  # before connecting: fsspec's __del__ closes it, connected or not
        # Connected to the address checked; the name stays for TLS (AUTH TLS and the data
        # connections check the certificate against ftp.host). Data connections go to the
        # control connection's peer: ftplib ignores the address in a PASV answer
        # (trust_server_pasv_ipv4_address is off), and EPSV carries none.
        ftp.connect(self._policy.resolve(self.host, self.port), self.port)
        ftp.host = self.host
        ftp.login(*self.cred)  # FTP_TLS.login sends AUTH TLS first


class _SessionReusingFTP(ftplib.FTP_TLS):
    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple[Any, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:  # type: ignore[attr-defined]
            conn = self.context.wrap_socket(
                conn,
                server_hostname=self.host,
                session=self.sock.session,  # type: ignore[union-attr]
            )
        return conn, size
