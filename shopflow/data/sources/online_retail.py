"""UCI Online Retail (I and II): invoice lines become purchase events and a catalogue.

Each invoice is a session; each line a `purchase` of a stock code by a customer (guests get a
per-invoice key). Cancellations (invoice numbers starting with C, negative quantities) and
non-product codes (postage, fees, manual adjustments) are left out and counted in the
manifest notes. Invoice times are UK local time and are converted to UTC.
"""

from __future__ import annotations

import pandas as pd

from shopflow.core.config import Params
from shopflow.core.errors import SourceError
from shopflow.data.contract import Tables
from shopflow.data.sources.files import read_table, require_rows

ALIASES = {
    "invoice": ("InvoiceNo", "Invoice"),
    "stock_code": ("StockCode",),
    "description": ("Description",),
    "quantity": ("Quantity",),
    "ts": ("InvoiceDate",),
    "price": ("UnitPrice", "Price"),
    "customer": ("CustomerID", "Customer ID"),
    "country": ("Country",),
}
PRODUCT_CODE = r"^\d{5}[A-Za-z]{0,2}$"


def _standardize(frame: pd.DataFrame, origin: str) -> pd.DataFrame:
    out = {}
    for name, options in ALIASES.items():
        found = next((c for c in options if c in frame.columns), None)
        if found is None:
            raise SourceError(
                f"{origin}: missing Online Retail column {' or '.join(options)} "
                f"(found: {', '.join(frame.columns)})"
            )
        out[name] = frame[found]
    return pd.DataFrame(out)


def read(params: Params) -> Tables:
    origin = params.ingest.path
    lines = _standardize(
        require_rows(read_table(origin, params.ingest.encoding), origin, "invoice"), origin
    )
    invoice = lines["invoice"].astype(str)
    quantity = pd.to_numeric(lines["quantity"], errors="coerce")
    cancelled = invoice.str.startswith("C") | (quantity <= 0)
    product_like = lines["stock_code"].astype(str).str.match(PRODUCT_CODE)
    keep = ~cancelled & product_like & lines["description"].notna()
    kept = lines[keep]
    ts = pd.to_datetime(kept["ts"], errors="coerce")
    if ts.dt.tz is None:
        ts = ts.dt.tz_localize("Europe/London", ambiguous="NaT", nonexistent="shift_forward")
    customer = (
        kept["customer"]
        .map(lambda c: f"customer-{int(float(c))}" if pd.notna(c) else None)
        .fillna("guest-" + kept["invoice"].astype(str))
    )
    events = pd.DataFrame(
        {
            "ts": ts.dt.tz_convert("UTC"),
            "session_id": "invoice-" + kept["invoice"].astype(str),
            "user_key": customer,
            "query": None,
            "product_id": kept["stock_code"].astype(str).str.upper(),
            "position": None,
            "event_type": "purchase",
        }
    )
    catalogue = (
        kept.assign(product_id=events["product_id"], title=kept["description"].str.strip())
        .groupby("product_id", sort=True)
        .agg(
            title=("title", lambda s: s.mode().iat[0]),
            price=("price", lambda s: pd.to_numeric(s, errors="coerce").median()),
            first_seen=("ts", "min"),
        )
        .reset_index()
    )
    catalogue["first_seen"] = pd.to_datetime(catalogue["first_seen"]).dt.tz_localize(
        "Europe/London", ambiguous="NaT", nonexistent="shift_forward"
    )
    notes: dict[str, object] = {
        "cancelled_lines": int(cancelled.sum()),
        "non_product_lines": int((~product_like & ~cancelled).sum()),
        "lines_without_description": int(
            (lines["description"].isna() & ~cancelled & product_like).sum()
        ),
    }
    return Tables(products=catalogue, events=events.reset_index(drop=True), notes=notes)
