"""Keys, signatures and the root of trust, shared by hub and agent.

Modules: ``keys`` (Ed25519/X25519 keys and ids), ``strictjson`` (the only JSON parser for
outside data), ``envelope`` (DSSE-style signed envelopes), ``roots`` (root documents, rotation,
role keys), ``keyfile`` (encrypted private key files and public key files), ``passphrase``
(passphrase sources), ``fileio`` (atomic writes, bounded reads), ``sealed`` (secrets sealed to
an agent), ``durations`` (``365d``, UTC times), and the ``tiangong keys`` commands in ``cli``,
``cli_root`` and ``cli_common``. Nothing here does network I/O; see docs/keys-and-trust.md.
"""
