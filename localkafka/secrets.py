"""The secure local broker's secrets: a CA, the broker's certificate signed by it (PEM, for
Kafka's PEM key store), and the SCRAM and key-store passwords, all under the broker's home and
readable by its owner alone. Used by localkafka/broker.py for `karma broker start --secure`."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path


class SecretsError(RuntimeError):
    """openssl is missing or failed."""


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
"""


def make_broker_secrets(
    secure_dir: Path,
    host: str,
    port: int,
    *,
    password_file: Path,
    keystore_password_file: Path,
    keystore: Path,
    ca_file: Path,
) -> None:
    """A fresh CA, the broker's certificate signed by it, and the passwords, in secure_dir.
    The CA's key is deleted once it has signed: nothing else is ever signed with it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SecretsError("openssl is not on PATH; `--secure` needs it to make the broker's certificate")
    secure_dir.mkdir(parents=True, exist_ok=True)
    secure_dir.chmod(0o700)  # the keys inside, temporary ones included, are the owner's alone
    write_private(password_file, secrets.token_urlsafe(24) + "\n")
    write_private(keystore_password_file, secrets.token_urlsafe(24) + "\n")
    d = secure_dir
    cnf, ca_key, key, csr, crt, p8 = (
        d / name for name in ("openssl.cnf", "ca.key", "broker.key", "broker.csr", "broker.crt", "broker.p8")
    )
    cnf.write_text(_OPENSSL_CNF.format(host=host))
    new_key = [openssl, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"]
    serial = f"0x{secrets.token_hex(16)}"
    steps = [
        [*new_key, str(ca_key)],
        [openssl, "req", "-x509", "-new", "-key", str(ca_key), "-config", str(cnf),
         "-extensions", "v3_ca", "-subj", f"/CN=karma local CA {host}:{port}",
         "-days", "3650", "-sha256", "-out", str(ca_file)],
        [*new_key, str(key)],
        [openssl, "req", "-new", "-key", str(key), "-config", str(cnf), "-subj", "/CN=localhost",
         "-out", str(csr)],
        [openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca_file), "-CAkey", str(ca_key),
         "-set_serial", serial, "-days", "825", "-sha256", "-extfile", str(cnf),
         "-extensions", "v3_broker", "-out", str(crt)],
        # The password through the environment, not the command line (visible in `ps`).
        [openssl, "pkcs8", "-topk8", "-v1", "PBE-SHA1-3DES", "-in", str(key),
         "-passout", "env:KARMA_KEYSTORE_PASSWORD", "-out", str(p8)],
    ]  # fmt: skip
    env = {**os.environ, "KARMA_KEYSTORE_PASSWORD": keystore_password_file.read_text().strip()}
    try:
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, env=env, timeout=60, check=False)
            if done.returncode != 0:
                raise SecretsError(
                    f"openssl {step[1]} failed (exit {done.returncode}) making the broker's certificate "
                    f"in {d}:\n{(done.stdout + done.stderr)[-3000:]}"
                )
        write_private(keystore, p8.read_text() + crt.read_text() + ca_file.read_text())
    finally:
        for temporary in (cnf, ca_key, key, csr, crt, p8):
            temporary.unlink(missing_ok=True)
    ca_file.chmod(0o644)  # the CA certificate is public: clients need it


def write_private(path: Path, text: str) -> None:
    """Writes a file only its owner can read (mode 0600, also if it existed with another mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)
