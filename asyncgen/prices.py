"""Cost in USD from a price table (``<config-dir>/prices.yaml``, USD per 1M tokens).

An unknown model has an unknown cost (``None``), never an error. Dated snapshots such as
``gpt-4o-2024-08-06`` fall back to their base name. A run is priced by the model the user asked
for; at a server other than OpenAI's (a local server may answer to any model name) only when the
user passed the price table themselves (``--prices``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from asyncgen.config import default_config_dir, read_yaml, resolve_config_dir
from asyncgen.errors import ConfigError, UsageError

_SNAPSHOT_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")
FIELDS = ("input", "cached_input", "output", "batch_input", "batch_output")


@dataclass(frozen=True)
class Price:
    input: float
    cached_input: float
    output: float
    batch_input: float
    batch_output: float


PriceTable = dict[str, Price]


def load_prices(path: Path) -> PriceTable:
    if not path.is_file():
        return {}
    data = read_yaml(path)
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise ConfigError(f"{path}: expected a 'models' mapping of model name to prices")
    table: PriceTable = {}
    for model, fields in models.items():
        if not isinstance(fields, dict) or set(fields) != set(FIELDS):
            raise ConfigError(f"{path}: model '{model}': expected exactly the keys {', '.join(FIELDS)}")
        bad = [k for k, v in fields.items() if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0]
        if bad:
            raise ConfigError(f"{path}: model '{model}': '{bad[0]}' must be a non-negative number (USD per 1M tokens)")
        table[str(model)] = Price(**{k: float(v) for k, v in fields.items()})
    return table


def price_for(table: PriceTable, model: str | None) -> Price | None:
    if not model:
        return None
    return table.get(model) or table.get(_SNAPSHOT_SUFFIX.sub("", model))


def is_openai_endpoint(base_url: str | None) -> bool:
    """No base URL (the OpenAI API, or the offline simulator of it) or OpenAI's own host."""
    return base_url is None or urlsplit(base_url).hostname == "api.openai.com"


# The most output tokens a request may ask of OpenAI's model families (../shared/docs/openai-protocol.md):
# a larger max_tokens is refused with a 400 invalid_value, after the run has started.
OUTPUT_TOKEN_LIMITS = (("gpt-4o", 16_384), ("gpt-4.1", 32_768))


def output_token_limit(model: str, base_url: str | None) -> int | None:
    """The documented output limit of ``model`` at OpenAI's API (or its offline simulator); None
    when it is not documented or the server is another (a local server has limits of its own)."""
    if not is_openai_endpoint(base_url):
        return None
    return next((limit for family, limit in OUTPUT_TOKEN_LIMITS if model == family or model.startswith(family + "-")),
                None)


def run_price(table: PriceTable, model: str, base_url: str | None, table_given: bool) -> Price | None:
    """What a run prices its requests at: ``model``'s price, trusted at OpenAI's API, and at any
    other server only when the user gave the table (``table_given``); otherwise unknown."""
    return price_for(table, model) if table_given or is_openai_endpoint(base_url) else None


def cost_usd(price: Price | None, prompt_tokens: float, completion_tokens: float, cached_tokens: float = 0) -> float | None:
    """USD for one real-time request's usage; None when the price is unknown."""
    if price is None:
        return None
    uncached = prompt_tokens - cached_tokens
    return (uncached * price.input + cached_tokens * price.cached_input + completion_tokens * price.output) / 1e6


def batch_cost_usd(price: Price | None, input_tokens: float, output_tokens: float) -> float | None:
    """USD for Batch API usage, at the batch columns of the price table; None when the price is unknown."""
    if price is None:
        return None
    return (input_tokens * price.batch_input + output_tokens * price.batch_output) / 1e6


def at_batch_rates(price: Price | None) -> Price | None:
    """``price`` with its batch columns as its real-time ones: a Batch API answer's usage priced as
    a real-time answer's is (``cost_usd``), at what the Batch API charges for it."""
    if price is None:
        return None
    return Price(input=price.batch_input, cached_input=price.batch_input, output=price.batch_output,
                 batch_input=price.batch_input, batch_output=price.batch_output)


def load_price_table(config_dir: str | None, prices_flag: str | None) -> tuple[PriceTable, Path]:
    """The price table: --prices, else <config-dir>/prices.yaml, else the shipped one."""
    folder = resolve_config_dir(config_dir)
    path = Path(prices_flag) if prices_flag else (
        folder / "prices.yaml" if (folder / "prices.yaml").is_file() else default_config_dir() / "prices.yaml"
    )
    if prices_flag and not path.is_file():
        raise UsageError(f"--prices {path}: no such file")
    return load_prices(path), path
