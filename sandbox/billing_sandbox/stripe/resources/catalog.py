"""Products and prices (lookup keys, licensed/metered recurring prices, graduated tiers)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import stripe
import stripe.params as P

from ..paging import list_page
from ..router import Ctx, route
from ..store import SandboxState
from ..wire import StripeError, matches_search, parse_search_query, search_object
from .events import apply_metadata, emit


def _now(ctx: Ctx) -> int:
    return ctx.state.real_now()


# ---- products ----------------------------------------------------------------------------------


def create_product(state: SandboxState, params: dict[str, Any]) -> dict[str, Any]:
    if params.get("id") and params["id"] in state.table("product"):
        raise StripeError(
            400, "Product already exists.", code="resource_already_exists", param="id"
        )
    now = state.real_now()
    prod = state.create(
        stripe.Product,
        "prod",
        id=params.get("id"),
        object="product",
        name=params["name"],
        active=params.get("active", True),
        description=params.get("description") or None,
        metadata=dict(params.get("metadata") or {}),
        unit_label=params.get("unit_label") or None,
        statement_descriptor=params.get("statement_descriptor") or None,
        tax_code=params.get("tax_code") or None,
        url=params.get("url") or None,
        images=params.get("images", []),
        created=now,
        updated=now,
        type="service",
    )
    emit(state, "product.created", prod, created=now)
    return prod


@route("POST", "/v1/products", P.ProductCreateParams)
def post_product(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    prod = create_product(ctx.state, params)
    if params.get("default_price_data"):
        dp = dict(params["default_price_data"])
        dp["product"] = prod["id"]
        price = create_price(ctx.state, dp)
        prod["default_price"] = price["id"]
    return prod


@route("GET", "/v1/products/{id}", P.ProductRetrieveParams)
def get_product(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    return ctx.state.get("product", id)


@route("POST", "/v1/products/{id}", P.ProductModifyParams)
def update_product(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    import copy

    prod = ctx.state.get("product", id)
    before = copy.deepcopy(prod)
    for k in ("name", "active", "description", "unit_label", "url", "default_price", "tax_code"):
        if k in params:
            prod[k] = params[k] if params[k] != "" else None
    if "metadata" in params:
        apply_metadata(prod, params["metadata"])
    prod["updated"] = _now(ctx)
    emit(ctx.state, "product.updated", prod, before=before)
    return prod


@route("DELETE", "/v1/products/{id}", P.ProductDeleteParams)
def delete_product(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    prod = ctx.state.get("product", id)
    if any(p["product"] == id for p in ctx.state.all("price")):
        raise StripeError(
            400,
            "This product cannot be deleted because it has one or more user-created prices.",
            code="product_has_prices",
        )
    prod["deleted"] = True
    return {"id": id, "object": "product", "deleted": True}


@route("GET", "/v1/products", P.ProductListParams)
def list_products(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    ids = set(params.get("ids") or [])

    def match(p: dict[str, Any]) -> bool:
        if "active" in params and p["active"] != params["active"]:
            return False
        return not ids or p["id"] in ids

    return list_page(ctx.state, "product", "/v1/products", params, match)


@route("GET", "/v1/products/search", P.ProductSearchParams)
def search_products(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    clauses = parse_search_query(params["query"])
    items = [p for p in ctx.state.all("product") if matches_search(p, clauses)]
    return search_object(items, "/v1/products/search", params)


# ---- prices ------------------------------------------------------------------------------------


def _tier(t: dict[str, Any], i: int) -> dict[str, Any]:
    up_to = t.get("up_to")
    if up_to in (None, ""):
        raise StripeError(
            400, f"Missing required param: tiers[{i}][up_to].", param=f"tiers[{i}][up_to]"
        )
    ua = t.get("unit_amount_decimal", t.get("unit_amount"))
    fa = t.get("flat_amount_decimal", t.get("flat_amount"))
    return {
        "up_to": None if up_to == "inf" else int(up_to),
        "unit_amount": int(t["unit_amount"])
        if t.get("unit_amount") not in (None, "")
        else (
            int(Decimal(str(ua))) if ua not in (None, "") and Decimal(str(ua)) % 1 == 0 else None
        ),
        "unit_amount_decimal": str(Decimal(str(ua))) if ua not in (None, "") else None,
        "flat_amount": int(t["flat_amount"]) if t.get("flat_amount") not in (None, "") else None,
        "flat_amount_decimal": str(Decimal(str(fa))) if fa not in (None, "") else None,
    }


def _unset_lookup_key(state: SandboxState, key: str, transfer: bool) -> None:
    for other in state.all("price"):
        if other.get("lookup_key") == key:
            if not transfer:
                raise StripeError(
                    400,
                    f"A price (`{other['id']}`) already uses that lookup key.",
                    param="lookup_key",
                    code="lookup_key_already_exists" if False else None,
                )
            other["lookup_key"] = None


def create_price(state: SandboxState, params: dict[str, Any]) -> dict[str, Any]:
    if params.get("product_data"):
        pd = params["product_data"]
        prod = create_product(
            state, {"name": pd["name"], **{k: v for k, v in pd.items() if k != "name"}}
        )
        product_id = prod["id"]
    elif params.get("product"):
        product_id = params["product"]
        state.get("product", product_id, "product")
    else:
        raise StripeError(
            400, "Missing required param: product.", param="product", code="parameter_missing"
        )
    scheme = params.get("billing_scheme", "per_unit")
    recurring = params.get("recurring")
    rec_out = None
    if recurring:
        usage_type = recurring.get("usage_type", "licensed")
        meter = recurring.get("meter") or None
        if usage_type == "metered" and not meter:
            raise StripeError(
                400,
                "Metered prices must be backed by a meter: recurring[meter] is required.",
                param="recurring[meter]",
            )
        if meter:
            state.get("billing.meter", meter, "recurring[meter]")
        rec_out = {
            "interval": recurring["interval"],
            "interval_count": recurring.get("interval_count", 1),
            "meter": meter,
            "trial_period_days": recurring.get("trial_period_days"),
            "usage_type": usage_type,
        }
    tiers = None
    tiers_mode = None
    unit_amount = None
    unit_amount_decimal = None
    if scheme == "tiered":
        if not params.get("tiers") or not params.get("tiers_mode"):
            raise StripeError(400, "Tiered prices require `tiers` and `tiers_mode`.", param="tiers")
        tiers = [_tier(t, i) for i, t in enumerate(params["tiers"])]
        if tiers[-1]["up_to"] is not None:
            raise StripeError(400, "The last tier must have `up_to` set to `inf`.", param="tiers")
        tiers_mode = params["tiers_mode"]
        if "unit_amount" in params or "unit_amount_decimal" in params:
            raise StripeError(
                400,
                "You may only specify one of these parameters: unit_amount, tiers.",
                param="unit_amount",
            )
    else:
        if "unit_amount" in params and "unit_amount_decimal" in params:
            raise StripeError(
                400,
                "You may only specify one of these parameters: unit_amount, unit_amount_decimal.",
                param="unit_amount",
            )
        if "unit_amount" in params:
            unit_amount = int(params["unit_amount"])
            unit_amount_decimal = str(unit_amount)
        elif "unit_amount_decimal" in params:
            d = Decimal(str(params["unit_amount_decimal"]))
            unit_amount_decimal = str(d)
            unit_amount = int(d) if d % 1 == 0 else None
        elif not params.get("custom_unit_amount"):
            raise StripeError(
                400,
                "Missing required param: unit_amount.",
                param="unit_amount",
                code="parameter_missing",
            )
    if params.get("lookup_key"):
        _unset_lookup_key(state, params["lookup_key"], bool(params.get("transfer_lookup_key")))
    now = state.real_now()
    price = state.create(
        stripe.Price,
        "price",
        object="price",
        active=params.get("active", True),
        billing_scheme=scheme,
        created=now,
        currency=params["currency"].lower(),
        lookup_key=params.get("lookup_key") or None,
        metadata=dict(params.get("metadata") or {}),
        nickname=params.get("nickname") or None,
        product=product_id,
        recurring=rec_out,
        tax_behavior=params.get("tax_behavior", "unspecified"),
        tiers_mode=tiers_mode,
        type="recurring" if rec_out else "one_time",
        unit_amount=unit_amount,
        unit_amount_decimal=unit_amount_decimal,
    )
    price.pop("tiers", None)
    price["_tiers"] = tiers
    emit(state, "price.created", price, created=now)
    return price


@route("POST", "/v1/prices", P.PriceCreateParams)
def post_price(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    return create_price(ctx.state, params)


@route("GET", "/v1/prices/{id}", P.PriceRetrieveParams)
def get_price(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    return ctx.state.get("price", id)


@route("POST", "/v1/prices/{id}", P.PriceModifyParams)
def update_price(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    import copy

    price = ctx.state.get("price", id)
    before = copy.deepcopy(price)
    if "lookup_key" in params:
        if params["lookup_key"]:
            if params["lookup_key"] != price.get("lookup_key"):
                _unset_lookup_key(
                    ctx.state, params["lookup_key"], bool(params.get("transfer_lookup_key"))
                )
            price["lookup_key"] = params["lookup_key"]
        else:
            price["lookup_key"] = None
    for k in ("active", "nickname", "tax_behavior"):
        if k in params:
            price[k] = params[k] if params[k] != "" else None
    if "metadata" in params:
        apply_metadata(price, params["metadata"])
    emit(ctx.state, "price.updated", price, before=before)
    return price


@route("GET", "/v1/prices", P.PriceListParams)
def list_prices(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    keys = set(params.get("lookup_keys") or [])
    equal = {k: params[k] for k in ("product", "currency", "type") if params.get(k)}
    rec = {k: v for k, v in (params.get("recurring") or {}).items() if v}

    def match(p: dict[str, Any]) -> bool:
        if "active" in params and p["active"] != params["active"]:
            return False
        if keys and p.get("lookup_key") not in keys:
            return False
        if any(p[k] != v for k, v in equal.items()):
            return False
        recurring = p.get("recurring") or {}
        return all(recurring.get(k) == v for k, v in rec.items())

    return list_page(ctx.state, "price", "/v1/prices", params, match)


@route("GET", "/v1/prices/search", P.PriceSearchParams)
def search_prices(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    clauses = parse_search_query(params["query"])
    items = [p for p in ctx.state.all("price") if matches_search(p, clauses)]
    return search_object(items, "/v1/prices/search", params)


# ---- pricing math ------------------------------------------------------------------------------


def amount_for(price: dict[str, Any], quantity: int) -> int:
    """Amount in minor units for `quantity` of `price` (per-unit or tiered), rounded half-up."""
    if price["billing_scheme"] == "tiered":
        tiers = price["_tiers"] or []
        total = Decimal(0)
        if price["tiers_mode"] == "graduated":
            prev = 0
            for t in tiers:
                top = t["up_to"]
                in_tier = (quantity if top is None else min(quantity, top)) - prev
                if in_tier <= 0 and not (prev == 0 and quantity == 0 and False):
                    break
                total += Decimal(t["unit_amount_decimal"] or 0) * in_tier
                total += Decimal(t["flat_amount_decimal"] or 0)
                if top is None or quantity <= top:
                    break
                prev = top
        else:  # volume
            for t in tiers:
                if t["up_to"] is None or quantity <= t["up_to"]:
                    total = Decimal(t["unit_amount_decimal"] or 0) * quantity
                    total += Decimal(t["flat_amount_decimal"] or 0)
                    break
        return int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    unit = Decimal(price["unit_amount_decimal"] or 0)
    return int((unit * quantity).quantize(Decimal(1), rounding=ROUND_HALF_UP))
