"""The hub's domain services: every rule lives here (STYLE.md practice 8).

One module per area — ``users`` (roles and permissions), ``releases``, ``approvals``,
``environments``, ``agents``, ``deployments``, ``audit``. Each service function takes a
:class:`~hub.services.context.ServiceContext` (session, injected clock, acting user, key
store, paths), checks the actor's permission itself, writes its audit event in the same
transaction and raises the errors of :mod:`hub.errors`.

Services flush but never commit: the caller (a CLI command, a view, a test) owns the
transaction, so an action and its audit event are committed together or not at all.
"""
