"""The portal's agent version diff, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from _portal_kit import ROLES, Portal, apply_in_acme, open_portal

from conftest import agent_document, register
from corral.registry import list_agent_versions
from corral.settings import GovernanceSettings, Settings


@pytest.fixture
def settings(tmp_path: Path, settings: Settings) -> Settings:
    return settings.model_copy(
        update={"governance": GovernanceSettings(roles=ROLES, policy_refresh_seconds=0)}
    )


@pytest.fixture
async def portal(settings: Settings) -> AsyncIterator[Portal]:
    async with open_portal(settings) as found:
        yield found


async def versions_of(portal: Portal, name: str = "repo-analyst") -> list[str]:
    async with portal.platform.store.read("default") as session:
        return [v.version for v in await list_agent_versions(session, name, tenant_id="default")]


def diff_block(page: str) -> str:
    start = page.index('id="version-diff"')
    return page[start : page.index("</section>", start)]


# --- agent version diff ---------------------------------------------------------------------------


async def test_the_agent_page_diffs_the_two_newest_versions_by_default(portal: Portal) -> None:
    await register(portal.platform, agent_document(description="Reads <script>x()</script> code."))
    await register(portal.platform, agent_document(description="Third version."))
    third, second, _first = await versions_of(portal)
    dave = await portal.logged_in("user:dave")
    page = await dave.get("/ui/agents/repo-analyst")
    assert page.status_code == 200
    block = diff_block(page.text)
    assert f'<option value="{second}" selected>' in block
    assert f'<option value="{third}" selected>' in block
    assert f'<span class="diff-file">--- repo-analyst@{second}</span>' in block
    assert f'<span class="diff-file">+++ repo-analyst@{third}</span>' in block
    # Escaped, and classed by side: the old description removed, the new one added.
    assert (
        '<span class="diff-del">-description: Reads &lt;script&gt;x()&lt;/script&gt; code.</span>'
        in block
    )
    assert '<span class="diff-add">+description: Third version.</span>' in block
    assert "<script>x()" not in page.text
    assert 'class="diff-hunk">@@ ' in block
    assert block.count('class="diff-add"') == 1 and block.count('class="diff-del"') == 1
    css = await dave.get("/ui/static/portal.css")
    assert ".diff-add {" in css.text and ".diff-del {" in css.text


async def test_the_diff_takes_the_versions_from_the_query(portal: Portal) -> None:
    await register(portal.platform, agent_document(description="Second version."))
    second, first = await versions_of(portal)
    dave = await portal.logged_in("user:dave")
    backwards = diff_block(
        (await dave.get("/ui/agents/repo-analyst", params={"diff": f"{second}..{first}"})).text
    )
    assert f"--- repo-analyst@{second}" in backwards and f"+++ repo-analyst@{first}" in backwards
    assert '<span class="diff-del">-description: Second version.</span>' in backwards
    assert '<span class="diff-add">+description: Answers questions about a codebase.</span>' in (
        backwards
    )
    chosen = await dave.get("/ui/agents/repo-analyst", params={"from": first, "to": second})
    assert '<span class="diff-add">+description: Second version.</span>' in chosen.text
    same = await dave.get("/ui/agents/repo-analyst", params={"diff": f"{first}..{first}"})
    assert "diff-add" not in diff_block(same.text)
    assert f"The specs of {first} and {first} are identical." in same.text
    for bad in ({"diff": first}, {"diff": f"..{first}"}, {"from": first}):
        refused = await dave.get("/ui/agents/repo-analyst", params=bad)
        assert refused.status_code == 400, bad


async def test_an_unknown_version_is_a_404_naming_the_versions_that_exist(portal: Portal) -> None:
    await register(portal.platform, agent_document(description="Second version."))
    second, first = await versions_of(portal)
    dave = await portal.logged_in("user:dave")
    page = await dave.get("/ui/agents/repo-analyst", params={"diff": f"{first}..9.9.9"})
    assert page.status_code == 404
    assert "has no version &#39;9.9.9&#39;" in page.text
    assert f"versions: {second}, {first}." in page.text


async def test_another_tenants_versions_are_invisible_to_the_diff(portal: Portal) -> None:
    # acme's repo-analyst has a second version; default's has one. acme's agent is its own.
    await apply_in_acme(
        portal,
        agent_document(description="Acme first."),
        agent_document(description="Acme secret second."),
        agent_document(name="acme-only", description="Acme only first."),
        agent_document(name="acme-only", description="Acme only second."),
    )
    (first,) = await versions_of(portal)
    async with portal.platform.store.read("acme") as session:
        acme = [
            v.version for v in await list_agent_versions(session, "repo-analyst", tenant_id="acme")
        ]
    assert len(acme) == 2 and acme[-1] == first
    dave = await portal.logged_in("user:dave")
    page = await dave.get("/ui/agents/repo-analyst", params={"diff": f"{first}..{acme[0]}"})
    assert page.status_code == 404
    assert f"versions: {first}." in page.text and "Acme" not in page.text
    own = await dave.get("/ui/agents/repo-analyst")
    assert 'id="version-diff"' not in own.text  # one version here: nothing to compare
    other = await dave.get("/ui/agents/acme-only", params={"diff": f"{acme[-1]}..{acme[0]}"})
    assert other.status_code == 404 and "Acme" not in other.text
