"""The secure local broker's secrets: a CA; the broker's certificate signed by it (PEM, for
Kafka's PEM key store; its name, CN=admin, is the brokers' principal among themselves); one
client certificate and key per role (CN=<role>, for mutual TLS); and a SCRAM password per role
and the key store's, all under one folder readable by its owner alone (``SecretFiles`` names
them). Used by localkafka/broker.py and cluster.py for `karma broker start --secure`."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


class SecretsError(RuntimeError):
    """openssl is missing or failed."""


# The broker's certificate names the admin: brokers and controllers authenticate to each other
# with it (mutual TLS on the controller listener), as the one super user.
BROKER_PRINCIPAL = "admin"


@dataclass(frozen=True)
class SecretFiles:
    """Where the secrets of a secure broker (or of every node of a secure cluster) live."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"  # the clients' ssl_cafile; public

    @property
    def keystore(self) -> Path:
        return self.folder / "broker.pem"  # encrypted key + certificate chain

    @property
    def keystore_password(self) -> Path:
        return self.folder / "keystore.password"

    def password(self, role: str) -> Path:
        return self.folder / "users" / f"{role}.password"

    def certificate(self, role: str) -> Path:
        return self.folder / "certs" / f"{role}.pem"

    def key(self, role: str) -> Path:
        return self.folder / "certs" / f"{role}.key"


# The secure broker's certificates (openssl's config): a CA, and a broker certificate that names
# the broker's host and localhost, since clients check the name they connect to against it.
_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = karma local broker
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[v3_broker]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:{host}, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[v3_client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def make_broker_secrets(files: SecretFiles, host: str, port: int, roles: Iterable[str]) -> None:
    """A fresh CA, the broker's certificate, a certificate per role, and the passwords (a SCRAM
    one per role), in files.folder. The CA's key is deleted once it has signed them all: nothing
    else is ever signed with it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SecretsError("openssl is not on PATH; `--secure` needs it to make the broker's certificate")
    d = files.folder
    for folder in (d, d / "users", d / "certs"):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)  # the keys inside, temporary ones included, are the owner's alone
    roles = list(roles)
    for role in roles:
        write_private(files.password(role), secrets.token_urlsafe(24) + "\n")
    write_private(files.keystore_password, secrets.token_urlsafe(24) + "\n")
    cnf, ca_key, key, csr, crt, p8 = (
        d / name for name in ("openssl.cnf", "ca.key", "broker.key", "broker.csr", "broker.crt", "broker.p8")
    )
    cnf.write_text(_OPENSSL_CNF.format(host=host))
    new_key = [openssl, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"]

    def signed(subject: str, key_file: Path, csr_file: Path, crt_file: Path, ext: str) -> list[list[str]]:
        return [
            [*new_key, str(key_file)],
            [openssl, "req", "-new", "-key", str(key_file), "-config", str(cnf), "-subj", subject,
             "-out", str(csr_file)],
            [openssl, "x509", "-req", "-in", str(csr_file), "-CA", str(files.ca), "-CAkey", str(ca_key),
             "-set_serial", f"0x{secrets.token_hex(16)}", "-days", "825", "-sha256", "-extfile", str(cnf),
             "-extensions", ext, "-out", str(crt_file)],
        ]  # fmt: skip

    steps = [
        [*new_key, str(ca_key)],
        [openssl, "req", "-x509", "-new", "-key", str(ca_key), "-config", str(cnf),
         "-extensions", "v3_ca", "-subj", f"/CN=karma local CA {host}:{port}",
         "-days", "3650", "-sha256", "-out", str(files.ca)],
        *signed(f"/CN={BROKER_PRINCIPAL}", key, csr, crt, "v3_broker"),
        # The password through the environment, not the command line (visible in `ps`).
        [openssl, "pkcs8", "-topk8", "-v1", "PBE-SHA1-3DES", "-in", str(key),
         "-passout", "env:KARMA_KEYSTORE_PASSWORD", "-out", str(p8)],
    ]  # fmt: skip
    role_csrs = [d / "certs" / f"{role}.csr" for role in roles]
    for role, role_csr in zip(roles, role_csrs, strict=True):
        steps += signed(f"/CN={role}", files.key(role), role_csr, files.certificate(role), "v3_client")
    env = {**os.environ, "KARMA_KEYSTORE_PASSWORD": files.keystore_password.read_text().strip()}
    try:
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, env=env, timeout=60, check=False)
            if done.returncode != 0:
                raise SecretsError(
                    f"openssl {step[1]} failed (exit {done.returncode}) making the broker's certificates "
                    f"in {d}:\n{(done.stdout + done.stderr)[-3000:]}"
                )
        write_private(files.keystore, p8.read_text() + crt.read_text() + files.ca.read_text())
    finally:
        for temporary in (cnf, ca_key, key, csr, crt, p8, *role_csrs):
            temporary.unlink(missing_ok=True)
    for role in roles:
        files.key(role).chmod(0o600)
        files.certificate(role).chmod(0o644)
    files.ca.chmod(0o644)  # the CA certificate is public: clients need it


def write_private(path: Path, text: str) -> None:
    """Writes a file only its owner can read (mode 0600, also if it existed with another mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)
