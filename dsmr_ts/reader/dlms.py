"""Encrypted P1 frames (Luxembourg's Smarty, Sagemcom T210-D; Austrian meters alike): the DLMS
general-global-cipher APDU, decrypted with AES-128-GCM.

A frame, as the meter sends it on the serial line (binary, not hex):
  0xDB                       general-glo-ciphering tag
  0x08 <8 bytes>             system title (the meter's; with the invocation counter it is the IV)
  <length>                   A-XDR length of what follows: one byte below 0x80, else 0x81 <1>
                             or 0x82 <2 bytes>
  <1 byte>                   security control (0x30: authenticated and encrypted, suite 0)
  <4 bytes>                  invocation counter (big-endian)
  <ciphertext> <12 bytes>    the telegram text, then the GCM tag
IV = system title + invocation counter; additional authenticated data = security control +
authentication key (the grid operator hands out the decryption key; the authentication key is
the one the specification fixes unless the operator gives another).
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

TAG = 0xDB
SYSTEM_TITLE_LENGTH = 8
GCM_TAG_LENGTH = 12
# The Smarty specification's authentication key, used when reader.authentication_key is empty.
DEFAULT_AUTHENTICATION_KEY = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
MAX_FRAME_BYTES = 16 * 1024


class DecryptionError(ValueError):
    """A frame that cannot be decrypted; str() says why in one line (never a key)."""


def _header(buffer: bytes | bytearray) -> tuple[int, int] | None:
    """(header length, content length) of a frame at the start of buffer; None: more bytes
    needed. ValueError: not a frame here."""
    if len(buffer) < 1 + 1 + SYSTEM_TITLE_LENGTH + 1:
        return None
    if buffer[0] != TAG or buffer[1] != SYSTEM_TITLE_LENGTH:
        raise ValueError("no frame start")
    position = 2 + SYSTEM_TITLE_LENGTH
    first = buffer[position]
    if first < 0x80:
        return position + 1, first
    size = first - 0x80
    if size not in (1, 2):
        raise ValueError("unusable length")
    if len(buffer) < position + 1 + size:
        return None
    length = int.from_bytes(buffer[position + 1 : position + 1 + size], "big")
    return position + 1 + size, length


class EncryptedFramer:
    """Cut a byte stream into encrypted frames (reads may split frames anywhere or hold several).
    Bytes that cannot start a frame are dropped; the buffer is bounded."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.dropped_bytes = 0

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        frames = []
        while self.buffer:
            start = self.buffer.find(TAG)
            if start < 0:
                self._drop(len(self.buffer))
                break
            if start:
                self._drop(start)
            try:
                header = _header(self.buffer)
            except ValueError:
                self._drop(1)  # a 0xDB inside noise: look for the next one
                continue
            if header is None:
                break
            header_length, content_length = header
            if not 5 + GCM_TAG_LENGTH < content_length <= MAX_FRAME_BYTES:
                self._drop(1)
                continue
            end = header_length + content_length
            if len(self.buffer) < end:
                break
            frames.append(bytes(self.buffer[:end]))
            del self.buffer[:end]
        if len(self.buffer) > MAX_FRAME_BYTES + 16:
            self._drop(len(self.buffer))
        return frames

    def _drop(self, count: int) -> None:
        self.dropped_bytes += count
        del self.buffer[:count]


def decrypt(frame: bytes, key: bytes, authentication_key: bytes | None = None) -> bytes:
    """The telegram inside an encrypted frame. DecryptionError: damaged, or the wrong keys."""
    try:
        header = _header(frame)
    except ValueError:
        raise DecryptionError("not an encrypted P1 frame (no general-global-cipher header)") from None
    if header is None:
        raise DecryptionError("encrypted frame cut short")
    header_length, content_length = header
    content = frame[header_length : header_length + content_length]
    if len(content) != content_length or content_length <= 5 + GCM_TAG_LENGTH:
        raise DecryptionError("encrypted frame cut short")
    system_title = frame[2 : 2 + SYSTEM_TITLE_LENGTH]
    security_control = content[0]
    if security_control & 0x30 != 0x30:
        raise DecryptionError(f"security control 0x{security_control:02X}: only authenticated encryption is read")
    iv = system_title + content[1:5]
    associated = bytes([security_control]) + (authentication_key or DEFAULT_AUTHENTICATION_KEY)
    ciphertext, tag = content[5:-GCM_TAG_LENGTH], content[-GCM_TAG_LENGTH:]
    # A 12-byte GCM tag: AESGCM only takes 16, the Cipher API takes a truncated one.
    decryptor = Cipher(algorithms.AES(key), modes.GCM(iv, tag, min_tag_length=GCM_TAG_LENGTH)).decryptor()
    decryptor.authenticate_additional_data(associated)
    try:
        return decryptor.update(ciphertext) + decryptor.finalize()
    except InvalidTag:
        raise DecryptionError(
            "authentication failed: a damaged frame, or the wrong decryption or authentication key"
        ) from None
