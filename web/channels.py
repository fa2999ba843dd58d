"""The ``channels`` pages: each product's channels in order with the releases in each, the
rule for promoting into each, and the environments subscribed; buttons to approve a
promotion, promote and recall; and the subscriptions form on an environment's page
(``channels/_subscriptions.html``, included by ``environments/show.html``).

Views translate, services decide (STYLE.md): who may promote, approve, recall or subscribe,
the four-eyes rule and every promotion rule are decided in :mod:`hub.services.promotion` and
:mod:`hub.services.channels`. A refused promotion is shown on the channels page as a flash
message naming everything that is missing (a 303 back, nothing changed); every other refusal
is the usual error page (:mod:`web.views`). Buttons a person cannot use are hidden with
:func:`hub.services.users.can`, which protects nothing.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for

from hub.db import Environment, Product, db
from hub.errors import PromotionRefusedError, ValidationError
from hub.services.channels import (
    ChannelRule,
    active_entries,
    add_channel,
    count_entries,
    describe_rule,
    entry_in,
    format_duration,
    list_channels,
    parse_duration,
    remove_channel,
    set_rule,
    subscribe,
    subscribers,
    subscriptions_of,
    unsubscribe,
)
from hub.services.promotion import (
    approve_promotion,
    check_promotion,
    promote,
    promotion_approvers,
    recall,
)
from hub.services.releases import can_read, get_product, list_products, require_read
from hub.services.users import can
from web.views import ctx, in_scope, login_required, signed_in_user, visible_environment

__all__ = ["RELEASES_SHOWN", "bp", "subscriptions_panel"]

bp = Blueprint("channels", __name__, url_prefix="/channels")

RELEASES_SHOWN = 20  # newest releases listed per channel on a product's page


def _product(name: str) -> Product:
    """The product ``name`` for someone who may read releases; anyone else is answered as
    for a product that does not exist (:func:`web.views.in_scope`)."""
    sc = ctx()
    return in_scope(f"product {name[:64]!r} does not exist",
                    lambda: get_product(sc.session, name), lambda _p: can_read(sc.actor))


@bp.get("/")
@login_required
def index() -> Any:
    sc = ctx()
    require_read(sc.actor)
    products = [(p, list_channels(sc.session, p)) for p in list_products(sc.session)]
    return render_template("channels/index.html", products=products)


@bp.get("/<product>")
@login_required
def show(product: str) -> Any:
    sc = ctx()
    prod = _product(product)
    user = signed_in_user()
    chans = list_channels(sc.session, prod)
    now = sc.now()
    rows = []
    for i, channel in enumerate(chans):
        previous = chans[i - 1] if i else None
        following = chans[i + 1] if i + 1 < len(chans) else None
        releases = []
        for entry in active_entries(sc.session, channel, RELEASES_SHOWN):
            release = entry.release
            in_next = following is not None and entry_in(sc.session, following, release)
            item: dict[str, Any] = {"entry": entry, "release": release, "next": None,
                                    "moved_on": following.name if in_next and following else None}
            if following is not None and not in_next:
                missing, approvers, _ = check_promotion(sc.session, release, channel, following,
                                                        now)
                item["next"] = {
                    "channel": following, "missing": missing, "approvers": approvers,
                    "may_approve": (can(user, "channel.approve")
                                    and release.author_id != user.id
                                    and user.username not in promotion_approvers(
                                        sc.session, release, following)),
                }
            releases.append(item)
        rows.append({
            "channel": channel,
            "rule": describe_rule(channel, previous),
            "subscribers": [e for e in subscribers(sc.session, channel)
                            if can(user, "view", e)],
            "releases": releases,
            "count": count_entries(sc.session, channel),
        })
    return render_template(
        "channels/show.html", product=prod, rows=rows, format_duration=format_duration,
        may_promote=can(user, "channel.promote"), may_recall=can(user, "channel.recall"),
        may_manage=can(user, "channel.manage"))


def _back(product: str) -> Any:
    return redirect(url_for("channels.show", product=product), code=303)


@bp.post("/<product>/promote")
@login_required
def promote_release(product: str) -> Any:
    _product(product)
    version, to = request.form.get("version", ""), request.form.get("to") or None
    try:
        done = promote(ctx(), product, version, to, comment=request.form.get("comment", ""))
    except PromotionRefusedError as exc:
        db.session.rollback()
        flash(str(exc), "error")
        return _back(product)
    planned = ", ".join(f"{d.environment.name} ({d.state})" for d in done.planned)
    db.session.commit()
    flash(f"Release {product} {version} promoted from {done.previous.name} to "
          f"{done.entry.channel.name}" + (f"; deployments: {planned}." if planned else "."))
    return _back(product)


@bp.post("/<product>/approve")
@login_required
def approve(product: str) -> Any:
    _product(product)
    version, to = request.form.get("version", ""), request.form.get("to") or None
    _, channel = approve_promotion(ctx(), product, version, to,
                                   comment=request.form.get("comment", ""))
    name = channel.name
    db.session.commit()
    flash(f"You approved promoting {product} {version} to {name}.")
    return _back(product)


@bp.post("/<product>/recall")
@login_required
def recall_release(product: str) -> Any:
    _product(product)
    version, channel = request.form.get("version", ""), request.form.get("channel", "")
    done = recall(ctx(), product, version, channel, request.form.get("reason", ""))
    parts = [f"Release {product} {version} recalled from {', '.join(done.channels)}"]
    if done.cancelled:
        parts.append(f"{len(done.cancelled)} deployment(s) cancelled")
    if done.lost:
        parts.append(f"{len(done.lost)} exported bundle(s) declared lost (the next bundle "
                     "to each agent tells the site)")
    if done.at_site:
        parts.append(f"{len(done.at_site)} already at the site")
    db.session.commit()
    flash("; ".join(parts) + ".")
    return _back(product)


# --- admins: channels and their rules -------------------------------------------------------


def _whole(label: str, text: str | None) -> int:
    value = (text or "0").strip() or "0"
    if not value.isdecimal() or len(value) > 6:
        raise ValidationError(f"{label} must be a whole number, not {value[:20]!r}")
    return int(value)


@bp.post("/<product>/rule")
@login_required
def rule(product: str) -> Any:
    _product(product)
    form = request.form
    new = ChannelRule(
        required_approvals=_whole("required approvals", form.get("required_approvals")),
        min_successes=_whole("minimum successful agents", form.get("min_successes")),
        no_failures=form.get("no_failures") == "1",
        soak_seconds=parse_duration(form.get("soak") or "0"))
    channel = set_rule(ctx(), product, form.get("channel", ""), new)
    name = channel.name
    db.session.commit()
    flash(f"Rule for promoting {product} into {name} saved.")
    return _back(product)


@bp.post("/<product>/add")
@login_required
def add(product: str) -> Any:
    _product(product)
    after = request.form.get("after") or None
    channel = add_channel(ctx(), product, request.form.get("name", ""), after=after)
    name = channel.name
    db.session.commit()
    flash(f"Channel {name} added to {product}.")
    return _back(product)


@bp.post("/<product>/remove")
@login_required
def remove(product: str) -> Any:
    _product(product)
    name = request.form.get("channel", "")
    held = remove_channel(ctx(), product, name)
    db.session.commit()
    what = f" (it held {', '.join(held)})" if held else ""
    flash(f"Channel {name.upper()} removed from {product}{what}.")
    return _back(product)


# --- an environment's subscriptions (shown on its page) -------------------------------------


def subscriptions_panel(env: Environment) -> dict[str, Any]:
    """What ``channels/_subscriptions.html`` shows for ``env`` (whose page the user may
    view): its subscriptions, and the products with their channels for the form."""
    sc = ctx()
    user = signed_in_user()
    choices = []
    if can(user, "environment.update", env):
        choices = [(p.name, [c.name for c in list_channels(sc.session, p)])
                   for p in list_products(sc.session)]
    return {"subscriptions": subscriptions_of(sc.session, env), "choices": choices,
            "may_subscribe": bool(choices)}


@bp.app_context_processor
def _panel() -> dict[str, Any]:
    return {"channel_subscriptions": subscriptions_panel}


@bp.post("/subscriptions/<environment>")
@login_required
def subscribe_environment(environment: str) -> Any:
    visible_environment(environment)
    product = request.form.get("product", "")
    channel = request.form.get("channel", "")
    if not product or not channel:
        raise ValidationError("choose a product and one of its channels")
    sub, previous = subscribe(ctx(), environment, product, channel)
    name = sub.channel.name
    db.session.commit()
    was = f" (was {previous})" if previous else ""
    flash(f"Environment {environment} subscribes to {name} of {product}{was}.")
    return redirect(url_for("environments.show", name=environment), code=303)


@bp.post("/subscriptions/<environment>/remove")
@login_required
def unsubscribe_environment(environment: str) -> Any:
    visible_environment(environment)
    product = request.form.get("product", "")
    channel = unsubscribe(ctx(), environment, product)
    db.session.commit()
    flash(f"Environment {environment} no longer subscribes to {channel} of {product}.")
    return redirect(url_for("environments.show", name=environment), code=303)
