"""Privacy at the door: keyed pseudonyms for people, placeholders for PII typed into search.

User and session ids become HMAC-SHA256 pseudonyms under a secret key
(`SHOPFLOW_PSEUDONYM_KEY`, see `shopflow.core.secrets`), so the same person keeps the same key
across nights (needed for recommendation histories) while the raw id cannot be recovered
without the key. Outside the synthetic demo a missing or public key is an error: with a known
key and guessable raw ids every pseudonym could be reversed by hashing the candidates. Query text is
scrubbed of e-mail addresses, phone numbers and card numbers (Luhn-checked, so product codes
and sizes survive) before anything is written.
"""

from __future__ import annotations

import hashlib
import hmac
import re

import numpy as np
import pandas as pd

from shopflow.core.secrets import Mode, require_key

KEY_ENV = "SHOPFLOW_PSEUDONYM_KEY"
DEV_KEY = "shopflow-development-key-do-not-use-in-production"
USER_PREFIX = "u_"
SESSION_PREFIX = "s_"
PSEUDONYM_PATTERN = r"^[us]_[0-9a-f]{16}$"

EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
CARD_RE = re.compile(r"(?<![\w])(?:\d[ -]?){12,18}\d(?![\w])")
PHONE_RE = re.compile(r"(?<![\w+])\+?\(?\d[\d\s().-]{7,}\d(?![\w])")
MIN_PHONE_DIGITS = 9


def pseudonym_key(mode: Mode) -> bytes:
    """The HMAC key: a secret in production; the public development key only in the demo."""
    return require_key(KEY_ENV, mode, DEV_KEY, "customer pseudonyms")


def key_fingerprint(key: bytes) -> str:
    """A short id of the key (not the key), recorded in the manifest to detect key changes."""
    return hmac.new(key, b"shopflow-key-fingerprint", hashlib.sha256).hexdigest()[:12]


def pseudonymize(ids: pd.Series, key: bytes, prefix: str = USER_PREFIX) -> pd.Series:
    """Map raw ids to `prefix` + 16 hex chars of HMAC-SHA256; nulls stay null.

    Hashes each distinct id once (a day of events has far fewer users than rows).
    """
    if pd.api.types.infer_dtype(ids, skipna=True) != "string":
        ids = ids.astype("object").map(str, na_action="ignore")
    codes, uniques = pd.factorize(ids)
    digests = np.array(
        [
            prefix + hmac.new(key, str(raw).encode("utf-8"), hashlib.sha256).hexdigest()[:16]
            for raw in uniques
        ]
        + [None],
        dtype=object,
    )
    return pd.Series(digests[codes], index=ids.index, dtype="object")  # code -1 -> None


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_or_keep(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    return "<card>" if luhn_valid(digits) else match.group()


def _phone_or_keep(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    return "<phone>" if len(digits) >= MIN_PHONE_DIGITS else match.group()


def scrub_text(text: str) -> str:
    """Replace e-mails, card numbers and phone numbers in free text with placeholders."""
    text = EMAIL_RE.sub("<email>", text)
    text = CARD_RE.sub(_card_or_keep, text)
    return PHONE_RE.sub(_phone_or_keep, text)


def scrub_series(texts: pd.Series) -> pd.Series:
    """`scrub_text` over a column: each distinct text once, only those that could hold PII."""
    codes, uniques = pd.factorize(texts.astype("object"))
    if not len(uniques):
        return texts.astype("object")
    as_str = pd.Series(uniques, dtype="object").astype(str)
    suspicious = as_str.str.contains("@", regex=False) | as_str.str.count(r"\d").ge(7)
    cleaned = as_str.where(~suspicious, as_str[suspicious].map(scrub_text))
    values = np.append(cleaned.to_numpy(dtype=object), np.array([None], dtype=object))  # -1 → None
    return pd.Series(values[codes], index=texts.index, dtype="object")
