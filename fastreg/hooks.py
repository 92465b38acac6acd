"""Hook modules: operator code deciding user.auth, user.register,
user.unregister and call.route (Yate's custom-module route).

`[hooks] module = "package.module"` (importable) or a path to a `.py` file.
The module may define any of these functions, plain or `async`, each taking
one of the dataclasses below and returning what its docstring says:

    user_auth(AuthRequest)            -> str | UserAuth | Refuse | None
    user_register(RegisterRequest)    -> None | Accept | Refuse
    user_unregister(UnregisterRequest) -> None
    call_route(RouteRequest)          -> list[str] | Refuse | None

Only the functions the module defines are called; with no module the hot
path pays nothing (no hook object exists). `async def` hooks run on the
worker's event loop and must not block it; plain functions run in a thread
pool, so they may block (on a file, a socket), and they must then be safe to
call from several threads.

A hook that raises, returns something else than documented, or takes longer
than `hooks.timeout_s`, is logged with the request's Call-ID and counts as
failed: the request is answered `hooks.failure_status` (500 by default), and
the worker lives on. `conf/hooks_example.py` is a documented example.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import inspect
import logging
import os
import sys
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import Mapping

from fastreg.errors import ConfigError, SipError

log = logging.getLogger("fastreg.hooks")

HOOK_NAMES = ("user_auth", "user_register", "user_unregister", "call_route")


# -- what the hooks receive ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AuthRequest:
    """user_auth: which secret does `username` have? Asked once per user per
    cache period (`postgres.auth_cache_ttl_s`, also used without a database),
    not once per request: answer for the user, not for one request."""

    username: str
    realm: str


@dataclass(frozen=True, slots=True)
class RegisterRequest:
    """user_register: an authenticated REGISTER that adds or refreshes
    bindings, before anything is written. `contacts` are (contact URI,
    expires granted so far) for the contacts it adds or refreshes; `removed`
    the contact URIs it removes (expires 0)."""

    username: str | None  # the authenticated user
    aor: str
    contacts: tuple[tuple[str, int], ...]
    removed: tuple[str, ...]
    remove_all: bool  # 'Contact: *'
    call_id: str
    cseq: int
    source_host: str
    source_port: int
    transport: str
    user_agent: str | None


@dataclass(frozen=True, slots=True)
class UnregisterRequest:
    """user_unregister: bindings were removed (after the change is written;
    the hook cannot refuse it). `contacts` are the removed contact URIs."""

    username: str | None
    aor: str
    contacts: tuple[str, ...]
    call_id: str
    source_host: str
    source_port: int


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """call_route: where should a call for `called` go, beyond its bindings?"""

    called: str  # the user part of the Request-URI
    caller: str  # the user part of From
    call_id: str
    method: str = "INVITE"
    domain: str = ""
    source_host: str = ""
    source_port: int = 0


# -- what the hooks return -------------------------------------------------------

@dataclass(frozen=True, slots=True)
class UserAuth:
    """user_auth's answer for a user with secrets (any of them; none: the
    user exists but cannot authenticate). A plain str is taken as `password`."""

    password: str | None = field(default=None, repr=False)
    ha1: str | None = field(default=None, repr=False)
    ha1_sha256: str | None = field(default=None, repr=False)
    settings: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Accept:
    """user_register's answer: accept, granting `expires` seconds to every
    contact it adds or refreshes (None: as the registrar decided). The value
    is capped at registrar.max_expires; it must be at least 1."""

    expires: int | None = None


@dataclass(frozen=True, slots=True)
class Refuse:
    """A refusal, answered with `status` (400-699) and `reason`."""

    status: int = 403
    reason: str = "Forbidden"


class HookFailed(SipError):
    """A hook raised, timed out or returned something undocumented."""


class Hooks:
    """The functions a hook module defines. `has(name)` says which."""

    def __init__(self, module: ModuleType, timeout_s: float, failure_status: int) -> None:
        self.module = module
        self.timeout_s = timeout_s
        self.failure_status = failure_status
        self.functions = {name: getattr(module, name) for name in HOOK_NAMES if callable(getattr(module, name, None))}
        self.failures = 0

    def has(self, name: str) -> bool:
        return name in self.functions

    async def call(self, name: str, argument, call_id: str | None = None):
        """Run hook `name` with `argument`; HookFailed on any failure (logged with the Call-ID)."""
        function = self.functions[name]
        try:
            if inspect.iscoroutinefunction(function):
                return await asyncio.wait_for(function(argument), self.timeout_s)
            loop = asyncio.get_running_loop()
            return await asyncio.wait_for(loop.run_in_executor(None, functools.partial(function, argument)),
                                          self.timeout_s)
        except asyncio.TimeoutError:
            self.failures += 1
            log.error("hook %s timed out after %.3g s (Call-ID %r)", name, self.timeout_s, call_id)
        except Exception:  # noqa: BLE001 - operator code: log it, answer, live on
            self.failures += 1
            log.exception("hook %s raised (Call-ID %r)", name, call_id)
        raise HookFailed(f"Hook {name} Failed", status=self.failure_status)

    def refused(self, name: str, call_id: str | None, what: object) -> HookFailed:
        """The error for a hook that returned `what`, which is not documented for it."""
        self.failures += 1
        log.error("hook %s returned %s, which it may not (Call-ID %r)", name, type(what).__name__, call_id)
        return HookFailed(f"Hook {name} Failed", status=self.failure_status)


def refusal_error(refuse: Refuse) -> SipError:
    status = refuse.status if isinstance(refuse.status, int) and 400 <= refuse.status <= 699 else 403
    reason = str(refuse.reason or "Forbidden").replace("\r", " ").replace("\n", " ")[:100]
    return SipError(reason, status=status)


def load_module(spec: str) -> ModuleType:
    """Import `spec`: a dotted module name, or a path to a .py file."""
    try:
        if spec.endswith(".py") or os.sep in spec:
            path = os.path.abspath(spec)
            name = "fastreg_hooks_" + os.path.splitext(os.path.basename(path))[0]
            module_spec = importlib.util.spec_from_file_location(name, path)
            if module_spec is None or module_spec.loader is None:
                raise ConfigError(f"hooks.module: {spec}: not a Python file")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
            return module
        return importlib.import_module(spec)
    except ConfigError:
        raise
    except FileNotFoundError:
        raise ConfigError(f"hooks.module: {spec}: no such file") from None
    except Exception as error:  # noqa: BLE001 - whatever the module raised at import
        raise ConfigError(f"hooks.module: {spec}: cannot import: {type(error).__name__}: {error}") from None


def load_hooks(spec: str, timeout_s: float, failure_status: int) -> Hooks | None:
    """The hooks of module `spec`, or None when it is empty or defines none of them."""
    if not spec:
        return None
    hooks = Hooks(load_module(spec), timeout_s, failure_status)
    if not hooks.functions:
        log.warning("hooks.module %s defines none of %s", spec, ", ".join(HOOK_NAMES))
        return None
    log.info("hooks from %s: %s", spec, ", ".join(hooks.functions))
    return hooks


def as_settings(mapping: Mapping) -> Mapping[str, str]:
    return MappingProxyType({str(k): str(v) for k, v in dict(mapping).items()})


__all__ = ["AuthRequest", "RegisterRequest", "UnregisterRequest", "RouteRequest", "UserAuth", "Accept", "Refuse",
           "Hooks", "HookFailed", "load_hooks", "load_module", "refusal_error", "HOOK_NAMES"]
