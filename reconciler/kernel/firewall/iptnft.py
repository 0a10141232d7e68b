"""iptables rules in the iptables-nft tables, written by iptables-nft's own tools.

On a host whose `iptables` is the nft variant (Debian's default), rules must live where that
command reads and writes them: the nftables tables `ip filter`, `ip6 filter`, ... in xtables
format. That is where the reference plugins put theirs (they exec `iptables`), where an operator's
`iptables -A CNI-ADMIN ...` lands, and the only place an ACCEPT can pass traffic through an
`iptables -P FORWARD DROP` policy: a verdict in the legacy tables does not reach the nft chains.
python-iptables drives only the legacy tables, so this module reads a table with
`iptables-nft-save` and writes with one `iptables-nft-restore --noflush` per transaction, which
the kernel applies atomically (a transaction that fails changes nothing and is retried once on a
fresh read: another writer may have made the same chain).

`Session` offers the subset of `iptables.Session` the firewall plugin uses, over rules as token
lists (`-s`/`-d` normalised to a prefix, as the save format prints them).
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from reconciler.kernel.firewall.base import BackendUnavailable, FirewallError, each_family
from reconciler.kernel.firewall.nsexec import netns_path

if TYPE_CHECKING:
    import subprocess

T = TypeVar("T")
Rule = list[str]  # the tokens after "-A CHAIN"
ATTEMPTS = 2
_ADDRESS_OPTIONS = {"-s": "-s", "--source": "-s", "-d": "-d", "--destination": "-d"}


# shutil, subprocess and shlex are imported where used: this module comes with firewall.xtnft on
# every cold ipMasq/portmap start, most of which never exec a tool (~11 ms of imports).


def _tool(family: int, verb: str) -> str:
    import shutil

    name = f"{'ip' if family == 4 else 'ip6'}tables-nft-{verb}"
    path = shutil.which(name)
    if path is None:
        raise BackendUnavailable(f"{name} is not installed")
    return path


def available() -> bool:
    import shutil

    return shutil.which("iptables-nft-restore") is not None and shutil.which("iptables-nft-save") is not None


def _run(netns: str | None, cmd: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    import subprocess

    if netns:
        cmd = ["nsenter", f"--net={netns_path(netns)}", *cmd]
    try:
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FirewallError(f"{cmd[0]}: {exc}") from exc


def save(netns: str | None, family: int, table: str) -> str:
    """`ip[6]tables-nft-save -t table` inside `netns` (FirewallError if the tool is missing or fails)."""
    done = _run(netns, [_tool(family, "save"), "-t", table])
    if done.returncode != 0:
        raise FirewallError(f"iptables-nft-save -t {table}: {done.stderr.strip()}")
    return done.stdout


def _normal(tokens: Sequence[str]) -> Rule:
    """`tokens` as the save format prints them: source and destination with their prefix length."""
    out = list(tokens)
    for i, tok in enumerate(out[:-1]):
        short = _ADDRESS_OPTIONS.get(tok)
        if short is not None:
            out[i] = short
            with contextlib.suppress(ValueError):
                out[i + 1] = str(ipaddress.ip_network(out[i + 1], strict=False))
    return out


def _quote(token: str) -> str:
    if token and not any(c in token for c in ' "\\\t'):
        return token
    return '"' + token.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(tokens: Sequence[str]) -> str:
    return " ".join(_quote(t) for t in tokens)


class Session:
    """One table of one family in one namespace, read once; changes are queued until `commit`."""

    def __init__(self, netns: str | None, family: int, table: str) -> None:
        self.netns, self.family, self.table = netns, family, table
        self.present = False  # the table holds a rule or a chain of its own (see `_read`)
        self._chains: dict[str, list[Rule]] = {}
        self._queue: list[str] = []
        self._read()

    def _read(self) -> None:
        import shlex

        text = save(self.netns, self.family, self.table)
        # The save prints a missing table with its built-in chains (policy ACCEPT) without making it,
        # so a table counts as present once it has a rule or a chain that is not built in.
        self.present = False
        for line in text.splitlines():
            if line.startswith(":"):
                name, policy = (line[1:].split() + ["-"])[:2]
                self._chains[name] = []
                self.present = self.present or policy == "-"
            elif line.startswith("-A "):
                chain, _, rest = line[3:].partition(" ")
                self._chains.setdefault(chain, []).append(_normal(shlex.split(rest)))
                self.present = True

    def has_chain(self, chain: str) -> bool:
        return chain in self._chains

    @staticmethod
    def comment_of(rule: Rule) -> str | None:
        for i, tok in enumerate(rule[:-1]):
            if tok == "--comment":
                return rule[i + 1]
        return None

    def has(self, chain: str, args: Sequence[str]) -> bool:
        return _normal(args) in self._chains.get(chain, [])

    def ensure_chain(self, chain: str) -> None:
        if chain not in self._chains:
            self._chains[chain] = []
            self._queue.append(f"-N {chain}")

    def append_unique(self, chain: str, args: Sequence[str]) -> bool:
        if self.has(chain, args):
            return False
        self._chains.setdefault(chain, []).append(_normal(args))
        self._queue.append(f"-A {chain} {render(args)}")
        return True

    def insert_unique(self, chain: str, args: Sequence[str], position: int = 0) -> bool:
        if self.has(chain, args):
            return False
        self._chains.setdefault(chain, []).insert(position, _normal(args))
        self._queue.append(f"-I {chain} {position + 1} {render(args)}")
        return True

    def delete(self, chain: str, args: Sequence[str]) -> int:
        return self.delete_where(chain, lambda rule: rule == _normal(args))

    def delete_where(self, chain: str, pred: Callable[[Rule], bool]) -> int:
        doomed = [rule for rule in self._chains.get(chain, []) if pred(rule)]
        for rule in doomed:
            self._chains[chain].remove(rule)
            self._queue.append(f"-D {chain} {render(rule)}")
        return len(doomed)

    def commit(self) -> None:
        if not self._queue:
            return
        script = f"*{self.table}\n" + "\n".join(self._queue) + "\nCOMMIT\n"
        done = _run(self.netns, [_tool(self.family, "restore"), "--noflush"], script)
        if done.returncode != 0:
            raise FirewallError(f"iptables-nft-restore: {done.stderr.strip() or done.stdout.strip()}")
        self._queue.clear()


def transact(netns: str | None, family: int, table: str, fn: Callable[[Session], T],
             existing_only: bool = False) -> T:
    """Run `fn(session)` on `table` and commit what it queued. A failed commit (a concurrent writer)
    is retried on a fresh read. `existing_only`: BackendUnavailable if the table does not exist."""
    for attempt in range(ATTEMPTS):
        session = Session(netns, family, table)
        if existing_only and not session.present:
            raise BackendUnavailable(f"no iptables-nft IPv{family} {table} table here")
        result = fn(session)
        try:
            session.commit()
        except FirewallError:
            if attempt == ATTEMPTS - 1:
                raise
            continue
        return result
    raise AssertionError("unreachable")


def in_each_family(netns: str | None, table: str, fn: Callable[[Session], T]) -> list[T]:
    """`fn(session)` on `table` of each IP family where it holds something (`Session.present`), as
    `iptables.in_each_family` does for the legacy tables; nothing when the tools are missing."""
    return each_family(transact, netns, table, fn)
