"""Virtual patches: a gateway rule per finding that blocks the attack at that location only.

Each backend builds a request key ``"METHOD decoded-path?raw-query"`` (and the
same with the form body in place of the query) and matches it against three
runtime-managed ACL files of PCRE patterns (include/gateway/haproxy.cfg.j2):

* ``<service>.block_injection.acl``: one pattern per rule, anchored on method,
  path and parameter name, matching only when *that* parameter's value holds
  an attack token of the finding's class (SQL, shell, XSS, traversal, code,
  ...). ``?category=books`` passes where ``?category=' OR 1=1--`` is denied.
* ``<service>.require_auth.acl``: the route is denied (401) unless an
  Authorization header is present (missing-auth findings).
* ``<service>.deny.acl``: the route is denied outright (exposed files,
  directory listings, debug endpoints).

Patterns are matched on the raw query, so every special character is matched
in both its literal and percent-encoded form; parameter names are matched in
any per-character percent-encoding too. Known limits (the real patch closes
them): JSON and multipart bodies are not inspected, form bodies only up to
HAProxy's buffer (~15 KB), and values an application decodes twice.

Rules change nothing but ACL entries through the runtime API: no reload.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from selfheal.findings.model import Finding
from selfheal.gateway.config import GatewayPaths
from selfheal.gateway.runtime import GatewayUnavailable, RuntimeAPIError, RuntimeClient, RuntimeUnavailable
from selfheal.gateway.state import RULE_ACTIONS, AuditEvent, GatewayStateStore, RuleAction, VirtualPatch
from selfheal.logs import with_log_context


class RuleError(ValueError):
    """A rule cannot be derived or applied (bad finding, path, service); nothing live changed."""


# ----------------------------------------------------------------- regex pieces
def _hex(ch: str) -> str:
    return "".join(f"%{b:02x}" for b in ch.encode())


def _x(ch: str) -> str:
    return "".join(f"\\x{b:02x}" for b in ch.encode())


def Q(chars: str) -> str:
    """Characters as they may appear in a raw query: literal or percent-encoded (hex any case)."""
    return "".join(f"(?:{_x(c)}|{_hex(c)})" for c in chars)


def E(chars: str) -> str:
    """Characters that can only arrive percent-encoded in a query value (``&``, CR, LF...)."""
    return "".join(_hex(c) for c in chars)


WS = r"(?:\s|\+|%(?:09|0a|0b|0c|0d|20))"
# A keyword boundary that also holds after a percent-escape ("%20union").
_KB0 = r"(?:(?<![a-z0-9_])|(?<=%[0-9a-f]{2}))"
_KB1 = r"(?![a-z0-9_])"


def KW(*words: str) -> str:
    return f"{_KB0}(?:{'|'.join(words)}){_KB1}"


@dataclass(frozen=True)
class AttackClass:
    """Tokens that make a parameter value an attack: anywhere in it, or at its start."""

    name: str
    anywhere: tuple[str, ...]
    start: tuple[str, ...] = ()
    bracket_is_attack: bool = False  # param[...]= (NoSQL operator injection)


ATTACKS: dict[str, AttackClass] = {
    "sqli": AttackClass(
        "sqli",
        (
            Q("'"), Q('"'), Q("`"), Q(";"), Q("--"), Q("/*"), Q("#"), Q("||"),
            KW("union") + r"[^&]*?" + KW("select"),
            KW("select") + r"[^&]*?" + KW("from"),
            KW("sleep", "benchmark", "pg_sleep", "extractvalue", "updatexml", "load_file", "char", "concat")
            + WS + "*" + Q("("),
            KW("waitfor") + WS + "+" + "delay",
            KW("or", "and", "xor") + WS + "+" + rf"(?:[0-9]|{Q(chr(39))}|{Q(chr(34))}|{Q('(')}|true|false|null)",
        ),
    ),
    "cmdi": AttackClass(
        "cmdi",
        (Q(";"), Q("|"), Q("`"), Q("$"), Q("<"), Q(">"), E("&"), E("\n"), E("\r"), "%00"),
    ),
    "xss": AttackClass(
        "xss",
        (
            Q("<"), Q(">"), Q('"'), Q("'"), Q("`"),
            KW("javascript", "vbscript") + WS + "*" + Q(":"),
            _KB0 + r"on[a-z]{3,}" + WS + "*" + Q("="),
        ),
    ),
    "traversal": AttackClass(
        "traversal",
        (Q(".."), "%00", "%25(?:2e|2f|5c)", "%c0%a[ef]", "%c1%9c"),
        start=(Q("/"), Q("\\"), Q("~"), r"[a-z]" + Q(":"), "file" + Q(":")),
    ),
    "code": AttackClass(
        "code",
        (
            Q("'"), Q('"'), Q(";"), Q("`"), Q("("), Q(")"), Q("{{"), Q("${"), Q("#{"), Q("<%"), Q("<?"),
            Q("__"),
        ),
    ),
    "nosql": AttackClass("nosql", (Q("$"), Q("{"), Q("["), Q('"')), bracket_is_attack=True),
    "crlf": AttackClass("crlf", (E("\r"), E("\n"), r"[\r\n]")),
    "redirect": AttackClass(
        "redirect",
        (),
        start=(Q("//"), Q("\\"), Q("/\\"), r"[a-z][a-z0-9+.-]*" + Q(":")),
    ),
    "ssrf": AttackClass(
        "ssrf",
        (KW("localhost"), r"127" + Q("."), r"169" + Q(".") + "254", Q("[::"), r"0x7f", KW("metadata")),
        start=(Q("//"), r"[a-z][a-z0-9+.-]*" + Q(":")),
    ),
    "ldap": AttackClass("ldap", (Q("*"), Q("("), Q(")"), Q("|"), Q("\\"), E("&"), "%00")),
    "xpath": AttackClass("xpath", (Q("'"), Q('"'), Q("["), Q("]"), Q("("), Q(")"), KW("or", "and"))),
}

# CWE -> attack class (injection family) ...
INJECTION_CWES: dict[int, str] = {
    89: "sqli", 564: "sqli",
    77: "cmdi", 78: "cmdi", 88: "cmdi",
    79: "xss", 80: "xss", 83: "xss", 87: "xss",
    22: "traversal", 23: "traversal", 35: "traversal", 36: "traversal", 73: "traversal", 98: "traversal",
    94: "code", 95: "code", 96: "code", 917: "code", 1336: "code",
    943: "nosql",
    93: "crlf", 113: "crlf",
    601: "redirect",
    918: "ssrf",
    90: "ldap",
    643: "xpath",
}
# ... and CWE -> route action for exposure / access-control findings.
ROUTE_CWES: dict[int, RuleAction] = {
    306: "require_auth", 287: "require_auth", 862: "require_auth", 285: "require_auth",
    284: "require_auth", 200: "require_auth", 425: "require_auth", 639: "require_auth",
    215: "deny", 489: "deny", 530: "deny", 538: "deny", 548: "deny", 552: "deny", 497: "deny", 540: "deny",
}

_METHOD = re.compile(r"^[A-Z]{1,16}$")
_PATH_CHARS = re.compile(r"^[\x21-\x7e\x80-\U0010ffff]+$")
_TEMPLATE_VAR = re.compile(r"\{[A-Za-z_][A-Za-z0-9_.-]{0,63}\}")
_PARAM = re.compile(r"^[^\s&=#\x00-\x1f\x7f]{1,128}$")
_RULE_ID = re.compile(r"\(\?#vp=([A-Za-z0-9_-]{1,64})\)")
_SERVICE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def _lit(text: str) -> str:
    """A decoded path segment as a PCRE literal: letters and ``-_~`` as is, the rest as \\xHH bytes."""
    return "".join(c if (c.isascii() and (c.isalnum() or c in "-_~")) else _x(c) for c in text)


def _path_regex(path: str, prefix: bool) -> str:
    """Regex for a decoded path or template; ``{var}`` matches one segment, repeated slashes tolerated.

    A trailing slash is optional; with ``prefix`` everything below the path matches too.
    """
    path = path.rstrip("/")
    out = []
    pos = 0
    for m in _TEMPLATE_VAR.finditer(path):
        out.append(_lit(path[pos : m.start()]).replace("\\x2f", "/+"))
        out.append("[^/?]+")
        pos = m.end()
    out.append(_lit(path[pos:]).replace("\\x2f", "/+"))
    rx = "".join(out)
    if not rx:
        return "/+" if not prefix else "/[^?]*"
    return f"{rx}(?:/[^?]*)?" if prefix else f"{rx}/*"


def normalize_path(path: str) -> tuple[str, bool]:
    """Validate a finding's path (URL or path, maybe templated); return the decoded path and prefix flag.

    Raises RuleError for anything that could not be a request path.
    """
    if not isinstance(path, str) or not path:
        raise RuleError("location has no path")
    if "://" in path:
        path = urlsplit(path).path or "/"
    path = path.split("?", 1)[0]
    if len(path) > 2048:
        raise RuleError(f"path longer than 2048 characters: {path[:60]!r}...")
    if not path.startswith("/"):
        raise RuleError(f"malformed path {path!r}: must start with '/'")
    decoded = unquote(path, errors="strict") if "%" in path else path
    if not _PATH_CHARS.match(decoded) or "#" in decoded:
        raise RuleError(f"malformed path {path!r}: spaces, control characters or '#' are not allowed")
    stripped = _TEMPLATE_VAR.sub("", decoded)
    if "{" in stripped or "}" in stripped:
        raise RuleError(f"malformed path template {path!r}: braces only as whole-segment {{name}} variables")
    return decoded, decoded.endswith("/") and decoded != "/"


def _methods_regex(method: str | None) -> str:
    if method is None:
        return "[A-Z]+"
    if not _METHOD.match(method):
        raise RuleError(f"malformed HTTP method {method!r}")
    # HEAD runs the GET handler in most frameworks.
    return "(?:GET|HEAD)" if method == "GET" else method


def _name_regex(param: str) -> str:
    """A parameter name in a raw query: every character literal or percent-encoded."""
    out = []
    for c in param:
        lit = c if (c.isascii() and c.isalnum()) else _x(c)
        out.append(f"(?:{lit}|{_hex(c)})")
    return "".join(out)


def rule_id(service: str, action: str, method: str | None, path: str, param: str | None, attack: str | None) -> str:
    key = "\0".join([service, action, method or "*", path, param or "*", attack or "-"])
    return "vp-" + hashlib.sha256(key.encode()).hexdigest()[:20]


def build_pattern(
    rid: str,
    action: RuleAction,
    method: str | None,
    path: str,
    param: str | None,
    attack: str | None,
) -> str:
    """The PCRE for one rule (also valid for Python's ``re``, which the unit tests use)."""
    decoded, prefix = normalize_path(path)
    head = f"(?i)(?#vp={rid})^{_methods_regex(method)}\\x20{_path_regex(decoded, prefix)}\\?"
    if action in ("require_auth", "deny"):
        return head
    if attack not in ATTACKS:
        raise RuleError(f"unknown attack class {attack!r}; known: {', '.join(sorted(ATTACKS))}")
    cls = ATTACKS[attack]
    if param is not None and not _PARAM.match(param):
        raise RuleError(f"malformed parameter name {param!r}")
    name = _name_regex(param) if param is not None else "[^&=]*"
    value_alts = [f"[^&]*?(?:{'|'.join(cls.anywhere)})"] if cls.anywhere else []
    value_alts += [f"(?:{'|'.join(cls.start)})"] if cls.start else []
    tail = f"(?:{Q('[')}[^&=]*)?=(?:{'|'.join(value_alts)})"
    if cls.bracket_is_attack:
        tail = f"(?:{Q('[')}|{tail})"
    return f"{head}(?:[^&]*&)*?{name}{tail}"


def derive(finding: Finding, service: str | None = None, action: RuleAction | None = None) -> VirtualPatch:
    """The virtual patch for a web finding (pure; raises RuleError when none fits).

    Injection CWEs give a parameter-scoped block; access-control and exposure
    CWEs give a route rule (require an Authorization header, or deny).
    """
    svc = service or finding.service
    if not svc:
        raise RuleError(f"finding {finding.fingerprint or finding.rule_id}: no service to attach the rule to")
    if not _SERVICE.match(svc):
        raise RuleError(f"malformed service name {svc!r}")
    if finding.kind != "web":
        raise RuleError(f"finding {finding.rule_id}: kind {finding.kind!r} has no gateway rule (only 'web')")
    loc = finding.location
    if loc is None or not (loc.path or loc.url):
        raise RuleError(f"finding {finding.rule_id}: no location path")
    if finding.cwe is None:
        raise RuleError(f"finding {finding.rule_id}: no CWE, cannot choose a rule")
    raw_path = loc.path or urlsplit(loc.url or "").path
    method = loc.method.upper() if loc.method else None
    param = loc.param or None
    attack: str | None = None
    if action is None:
        if finding.cwe in INJECTION_CWES:
            action, attack = "block_injection", INJECTION_CWES[finding.cwe]
        elif finding.cwe in ROUTE_CWES:
            action = ROUTE_CWES[finding.cwe]
        else:
            raise RuleError(f"finding {finding.rule_id}: CWE-{finding.cwe} has no virtual patch recipe")
    elif action == "block_injection":
        attack = INJECTION_CWES.get(finding.cwe)
        if attack is None:
            raise RuleError(f"finding {finding.rule_id}: CWE-{finding.cwe} is not an injection class")
    elif action not in RULE_ACTIONS:
        raise RuleError(f"unknown rule action {action!r}")
    if action != "block_injection":
        param = None
    decoded, _ = normalize_path(raw_path)
    rid = rule_id(svc, action, method, decoded, param, attack)
    pattern = build_pattern(rid, action, method, decoded, param, attack)
    where = f"{method or 'ANY'} {decoded}" + (f" param {param}" if param else "")
    reason = {
        "block_injection": f"block {attack} payloads in {'parameter ' + param if param else 'any parameter'}",
        "require_auth": "deny without an Authorization header",
        "deny": "deny the route",
    }[action]
    return VirtualPatch(
        id=rid, service=svc, action=action, path=decoded, pattern=pattern, method=method, param=param,
        attack_class=attack, cwe=finding.cwe, finding=finding.fingerprint,
        reason=f"CWE-{finding.cwe} at {where}: {reason}",
    )


def rule_id_of(pattern: str) -> str | None:
    m = _RULE_ID.search(pattern)
    return m.group(1) if m else None


def check_rule(rule: VirtualPatch, services: Iterable[str]) -> None:
    """Refuse a rule before anything is stored or sent: unknown service, bad action or pattern."""
    known = set(services)
    if rule.service not in known:
        raise RuleError(f"rule {rule.id}: unknown service {rule.service!r}; the gateway has: {sorted(known)}")
    if rule.action not in RULE_ACTIONS:
        raise RuleError(f"rule {rule.id}: unknown action {rule.action!r}")
    if rule_id_of(rule.pattern) != rule.id:
        raise RuleError(f"rule {rule.id}: pattern does not carry its rule id marker")
    if any(c in rule.pattern for c in "\r\n\0") or len(rule.pattern) > 8000:
        raise RuleError(f"rule {rule.id}: pattern has line breaks or is too long")
    # No re.compile here: it costs ~7 ms for these patterns (the whole latency budget is 10 ms),
    # and HAProxy's PCRE2 is the authority anyway: a pattern it refuses is rolled back by apply().


@dataclass
class RulesReconcile:
    added: int = 0
    removed: int = 0
    unchanged: int = 0
    orphaned: list[str] = field(default_factory=list)


class VirtualPatcher:
    """Applies and removes rules: desired state (with audit) first, then the runtime API.

    ``apply`` and ``remove`` are idempotent by rule id. A rule HAProxy refuses
    is taken back out of the desired state, so a refused rule never lingers.
    """

    def __init__(
        self,
        runtime: RuntimeClient,
        store: GatewayStateStore,
        paths: GatewayPaths,
        services: Iterable[str],
        audit_hook: Callable[[AuditEvent], None] | None = None,
        actor: str = "selfheal",
    ) -> None:
        self.runtime = runtime
        self.store = store
        self.paths = paths
        self.services = tuple(services)
        self.audit_hook = audit_hook
        self.actor = actor

    def acl(self, rule: VirtualPatch) -> str:
        return str(self.paths.acl(rule.service, rule.action))

    def _event(self, action: str, rule: VirtualPatch, **extra: object) -> AuditEvent:
        return AuditEvent(action=action, subject=rule.id, detail={**rule.to_dict(), **extra}, actor=self.actor)

    def _audit(self, ev: AuditEvent) -> None:
        if self.audit_hook is not None:
            self.audit_hook(ev)

    @with_log_context(finding_id="finding.fingerprint", service="service|finding.service")
    def apply_finding(self, finding: Finding, service: str | None = None) -> VirtualPatch:
        rule = derive(finding, service)
        self.apply(rule)
        return rule

    @with_log_context(finding_id="rule.finding", rule_id="rule.id", service="rule.service")
    def apply(self, rule: VirtualPatch) -> bool:
        """Make ``rule`` desired and live. Returns False when it already was both."""
        check_rule(rule, self.services)
        ev = self._event("gateway.rule.apply", rule)
        existing = self.store.put_rule(rule, ev)  # one atomic write with its audit row; none if unchanged
        if existing == rule:
            try:
                live = {e.pattern for e in self.runtime.acl_entries(self.acl(rule))}
                if rule.pattern in live:
                    return False
                self.runtime.add_acl(self.acl(rule), rule.pattern)
            except RuntimeUnavailable as e:
                raise GatewayUnavailable(f"rule {rule.id} is stored; gateway unreachable: {e.message}") from e
            return True
        try:
            self.runtime.add_acl(self.acl(rule), rule.pattern)
            if existing is not None and (existing.pattern, existing.action) != (rule.pattern, rule.action):
                self.runtime.del_acl(self.acl(existing), existing.pattern)
        except RuntimeUnavailable as e:
            self._audit(ev)
            raise GatewayUnavailable(f"rule {rule.id} is stored; gateway unreachable: {e.message}") from e
        except RuntimeAPIError as e:
            undo = self._event("gateway.rule.refused", rule, error=e.message)
            if existing is not None:
                self.store.put_rule(existing, undo)
            else:
                self.store.delete_rule(rule.id, undo)
            self._audit(undo)
            raise RuleError(f"rule {rule.id}: haproxy refused it: {e.message}") from e
        self._audit(ev)
        return True

    @with_log_context(finding_id="rule.finding", rule_id="rule.id|rule", service="rule.service")
    def remove(self, rule: VirtualPatch | str) -> bool:
        """Remove a rule from desired state and from the gateway. False when it was not there."""
        rid = rule if isinstance(rule, str) else rule.id
        stored = self.store.get_rule(rid)
        if stored is None:
            return False
        ev = self._event("gateway.rule.remove", stored)
        self.store.delete_rule(rid, ev)
        try:
            self.runtime.del_acl(self.acl(stored), stored.pattern)
        except RuntimeUnavailable as e:
            self._audit(ev)
            raise GatewayUnavailable(f"rule {rid} removed from desired state; gateway unreachable: {e.message}") from e
        self._audit(ev)
        return True

    def live_rule_ids(self, service: str | None = None) -> set[str]:
        ids: set[str] = set()
        for svc in self.services if service is None else (service,):
            for action in RULE_ACTIONS:
                for e in self.runtime.acl_entries(str(self.paths.acl(svc, action))):
                    rid = rule_id_of(e.pattern)
                    if rid:
                        ids.add(rid)
        return ids

    def reconcile(self) -> RulesReconcile:
        """Make every ACL file's live content equal the desired rules (atomic swap per file)."""
        report = RulesReconcile()
        desired_all = self.store.list_rules()
        report.orphaned = sorted(r.id for r in desired_all if r.service not in self.services)
        for svc in self.services:
            for action in RULE_ACTIONS:
                acl = str(self.paths.acl(svc, action))
                desired = [r.pattern for r in desired_all if r.service == svc and r.action == action]
                live = [e.pattern for e in self.runtime.acl_entries(acl)]
                if sorted(desired) == sorted(live):
                    report.unchanged += len(desired)
                    continue
                self.runtime.replace_acl(acl, desired)
                report.added += len(set(desired) - set(live))
                report.removed += len(set(live) - set(desired))
                report.unchanged += len(set(desired) & set(live))
        return report
