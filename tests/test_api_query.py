"""/v1/query (prepared queries) through the ASGI app of an in-process dev agent, and py-consul against a dev agent."""

from __future__ import annotations

import asyncio
import time

import pytest

pytestmark = pytest.mark.anyio


async def register(api, node: str, sid: str, service: str, tags: list, status: str = "passing", **extra) -> None:
    body = {
        "Node": node,
        "Address": "10.9.0.1",
        "NodeMeta": extra.pop("node_meta", {}),
        "Service": {"Service": service, "ID": sid, "Tags": tags, "Meta": extra.pop("meta", {}), **extra},
        "Checks": [{"CheckID": f"{sid}-chk", "Status": status, "ServiceID": sid}],
    }
    r = await api.put("/v1/catalog/register", json=body)
    assert r.status_code == 200, r.text


async def create(api, body: dict) -> str:
    r = await api.post("/v1/query", json=body)
    assert r.status_code == 200, r.text
    assert list(r.json()) == ["ID"]
    return r.json()["ID"]


async def execute(api, name: str, **params) -> dict:
    r = await api.get(f"/v1/query/{name}/execute", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def ids(result: dict) -> list[str]:
    return sorted(n["Service"]["ID"] for n in result["Nodes"])


@pytest.fixture(scope="module")
async def fleet(api):
    """pq-web: healthy, canary, warning, critical, and critical only through a check queries ignore."""
    await register(api, "pq-n0", "pq-0", "pq-web", ["primary", "v1"], node_meta={"rack": "a"}, meta={"ver": "1"})
    await register(api, "pq-n1", "pq-1", "pq-web", ["primary", "Canary"], node_meta={"rack": "b"}, meta={"ver": "2"})
    await register(api, "pq-n2", "pq-2", "pq-web", ["primary"], "warning", node_meta={"rack": "a"})
    await register(api, "pq-n3", "pq-3", "pq-web", ["primary"], "critical")
    await register(api, "pq-n4", "pq-4", "pq-web", ["primary"])
    r = await api.put("/v1/catalog/register", json={"Node": "pq-n4", "Address": "10.9.0.1", "Checks": [{"CheckID": "flaky", "Status": "critical"}]})
    assert r.status_code == 200
    return api


async def test_crud(api):
    qid = await create(api, {"Name": "crud-q", "Service": {"Service": "crud-svc", "Tags": ["a"]}, "DNS": {"TTL": "10s"}})
    [q] = (await api.get(f"/v1/query/{qid}")).json()
    assert list(q) == ["ID", "Name", "Session", "Token", "Template", "Service", "DNS", "CreateIndex", "ModifyIndex"]
    assert (q["ID"], q["Name"], q["Service"]["Service"], q["Service"]["Tags"], q["DNS"]) == (qid, "crud-q", "crud-svc", ["a"], {"TTL": "10s"})
    assert q["Service"]["Failover"] == {"NearestN": 0, "Datacenters": None, "Targets": None}
    assert q["CreateIndex"] == q["ModifyIndex"]
    assert qid in [x["ID"] for x in (await api.get("/v1/query")).json()]

    # PUT replaces the whole query; the ID comes from the URL, and what GET returned can be sent back.
    q["Service"]["Service"] = "crud-svc2"
    q["ID"] = "ignored"
    r = await api.put(f"/v1/query/{qid}", json=q)
    assert (r.status_code, r.content) == (200, b"")
    [q2] = (await api.get(f"/v1/query/{qid}")).json()
    assert q2["Service"]["Service"] == "crud-svc2" and q2["CreateIndex"] == q["CreateIndex"] < q2["ModifyIndex"]

    r = await api.delete(f"/v1/query/{qid}")
    assert (r.status_code, r.content) == (200, b"")
    r = await api.get(f"/v1/query/{qid}")
    assert (r.status_code, r.text) == (404, "Query not found")
    assert qid not in [x["ID"] for x in (await api.get("/v1/query")).json()]


async def test_unknown_ids_are_404(api):
    ghost = "00000000-0000-0000-0000-00000000dead"
    for method, path in [("GET", ghost), ("GET", f"{ghost}/execute"), ("GET", f"{ghost}/explain"), ("GET", "no-such-name/execute")]:
        r = await api.request(method, f"/v1/query/{path}")
        assert (r.status_code, r.text) == (404, "Query not found"), path
    for method in ("PUT", "DELETE"):
        r = await api.request(method, f"/v1/query/{ghost}", json={"Name": "x", "Service": {"Service": "s"}})
        assert (r.status_code, r.text) == (404, f"Cannot modify non-existent prepared query: '{ghost}'")


async def test_execute_filters_like_consul(fleet):
    api = fleet
    await create(api, {"Name": "pq-tags", "Service": {"Service": "pq-web", "Tags": ["PRIMARY", "!canary"]}, "DNS": {"TTL": "3s"}})
    result = await execute(api, "pq-tags")
    # Critical instances go (pq-3, and pq-4 through its node's check); warning stays; !canary drops pq-1.
    assert ids(result) == ["pq-0", "pq-2"]
    assert (result["Service"], result["DNS"], result["Datacenter"], result["Failovers"]) == ("pq-web", {"TTL": "3s"}, "dc1", 0)
    assert list(result)[:6] == ["Service", "Nodes", "DNS", "Datacenter", "PeerName", "Failovers"]

    await create(api, {"Name": "pq-ignore", "Service": {"Service": "pq-web", "IgnoreCheckIDs": ["flaky"]}})
    assert ids(await execute(api, "pq-ignore")) == ["pq-0", "pq-1", "pq-2", "pq-4"]
    await create(api, {"Name": "pq-passing", "Service": {"Service": "pq-web", "OnlyPassing": True, "IgnoreCheckIDs": ["flaky"]}})
    assert ids(await execute(api, "pq-passing")) == ["pq-0", "pq-1", "pq-4"]
    await create(api, {"Name": "pq-meta", "Service": {"Service": "pq-web", "NodeMeta": {"rack": "a"}, "ServiceMeta": {"ver": "1"}}})
    assert ids(await execute(api, "pq-meta")) == ["pq-0"]

    limited = await execute(api, "pq-ignore", limit="2")
    assert len(limited["Nodes"]) == 2 and set(ids(limited)) <= {"pq-0", "pq-1", "pq-2", "pq-4"}
    assert len((await execute(api, "pq-ignore", limit="0"))["Nodes"]) == 4


async def test_execute_nodes_are_health_service_entries_shuffled(fleet):
    api = fleet
    qid = await create(api, {"Name": "pq-all", "Service": {"Service": "pq-web", "IgnoreCheckIDs": ["flaky", "pq-3-chk"]}})
    health = {e["Service"]["ID"]: e for e in (await api.get("/v1/health/service/pq-web")).json()}
    orders = set()
    for _ in range(20):
        result = await execute(api, qid)  # by ID as well as by name
        assert all(n == health[n["Service"]["ID"]] for n in result["Nodes"])
        orders.add(tuple(n["Service"]["ID"] for n in result["Nodes"]))
    assert len(orders) > 1  # Consul shuffles when it has no coordinates to sort by
    for _ in range(5):
        assert (await execute(api, "pq-all", near="pq-n3"))["Nodes"][0]["Node"]["Node"] == "pq-n3"


async def test_connect_queries_return_proxies(api):
    await register(api, "pq-c1", "cweb-1", "cweb", [])
    await register(api, "pq-c1", "cweb-proxy", "cweb-sidecar-proxy", [], Kind="connect-proxy", Port=21000,
                   Proxy={"DestinationServiceName": "cweb"})
    await create(api, {"Name": "pq-cweb", "Service": {"Service": "cweb"}})
    await create(api, {"Name": "pq-cweb-connect", "Service": {"Service": "cweb", "Connect": True}})
    assert ids(await execute(api, "pq-cweb")) == ["cweb-1"]
    assert ids(await execute(api, "pq-cweb", connect="true")) == ["cweb-proxy"]
    assert ids(await execute(api, "pq-cweb-connect")) == ["cweb-proxy"]


async def test_template_prefix_match_interpolation_and_explain(fleet):
    api = fleet
    tid = await create(api, {
        "Name": "tpl-",
        "Template": {"Type": "name_prefix_match", "Regexp": "^tpl-([a-z]+-[a-z]+)(?:-(.*))?$", "RemoveEmptyTags": True},
        "Service": {"Service": "${match(1)}", "Tags": ["${match(2)}", "!canary"], "Near": "${name.suffix}"},
    })
    short = await create(api, {"Name": "tpl-pq-", "Template": {"Type": "name_prefix_match"}, "Service": {"Service": "pq-${name.suffix}", "Tags": ["v1"]}})

    r = await api.get("/v1/query/tpl-pq-web-primary/explain")
    assert r.status_code == 200, r.text
    rendered = r.json()["Query"]
    # The longest prefix ("tpl-pq-") wins over "tpl-".
    assert (rendered["Name"], rendered["Service"]["Service"], rendered["Service"]["Tags"]) == ("tpl-pq-", "pq-web-primary", ["v1"])

    assert (await api.delete(f"/v1/query/{short}")).status_code == 200
    rendered = (await api.get("/v1/query/tpl-pq-web-primary/explain")).json()["Query"]
    assert (rendered["ID"], rendered["Service"]["Service"], rendered["Service"]["Tags"]) == (tid, "pq-web", ["primary", "!canary"])
    assert rendered["Service"]["Near"] == "pq-web-primary"
    assert rendered["Template"]["Regexp"].startswith("^tpl-")
    # RemoveEmptyTags: no second group, no empty tag to filter everything out.
    assert (await api.get("/v1/query/tpl-pq-web/explain")).json()["Query"]["Service"]["Tags"] == ["!canary"]

    result = await execute(api, "tpl-pq-web-primary")
    assert (result["Service"], ids(result)) == ("pq-web", ["pq-0", "pq-2"])
    r = await api.get(f"/v1/query/{tid}/execute")  # templates run by name only
    assert (r.status_code, r.text) == (400, "prepared query templates can only be resolved up by name, not by ID")


async def test_template_name_interpolations(api):
    await create(api, {
        "Name": "parts-",
        "Template": {"Type": "name_prefix_match"},
        "Service": {"Service": "${name.prefix}|${name.suffix}|${name.full}|${agent.segment}|$${kept}"},
    })
    rendered = (await api.get("/v1/query/parts-abc/explain")).json()
    assert rendered["Query"]["Service"]["Service"] == "parts-|abc|parts-abc||${kept}"
    assert (rendered["KnownLeader"], rendered["ConsistencyLevel"]) == (True, "leader")


async def test_names_are_unique_and_nothing_changes_on_conflict(api):
    await create(api, {"Name": "dup-q", "Service": {"Service": "s"}})
    other = await create(api, {"Name": "dup-q2", "Service": {"Service": "s"}})
    before = (await api.get("/v1/query")).json()
    r = await api.post("/v1/query", json={"Name": "DUP-Q", "Service": {"Service": "s"}})
    assert (r.status_code, r.text) == (400, "name 'DUP-Q' aliases an existing query name")
    r = await api.put(f"/v1/query/{other}", json={"Name": "dup-q", "Service": {"Service": "s"}})
    assert (r.status_code, r.text) == (400, "name 'dup-q' aliases an existing query name")
    r = await api.post("/v1/query", json={"Name": other, "Service": {"Service": "s"}})
    assert (r.status_code, r.text) == (400, f"name '{other}' aliases an existing query ID")
    await create(api, {"Template": {"Type": "name_prefix_match"}, "Service": {"Service": "${name.full}"}})
    r = await api.post("/v1/query", json={"Template": {"Type": "name_prefix_match"}, "Service": {"Service": "x"}})
    assert (r.status_code, r.text) == (400, "a query template with an empty name already exists")
    after = (await api.get("/v1/query")).json()
    assert [q for q in after if q["Name"] != ""] == before


@pytest.mark.parametrize(
    "body,text",
    [
        ({}, "Invalid prepared query: Must be bound to a session"),
        ({"Name": "v"}, "Invalid prepared query: Must provide a Service name to query"),
        ({"Name": "v", "Token": "<hidden>", "Service": {"Service": "s"}},
         "Invalid prepared query: Bad Token '<hidden>', it looks like a query definition with a redacted token was submitted"),
        ({"Name": "v", "Service": {"Service": "s", "Failover": {"NearestN": -1}}}, "Invalid prepared query: Bad NearestN '-1', must be >= 0"),
        ({"Name": "v", "Service": {"Service": "s", "Failover": {"Datacenters": ["dc2"], "Targets": [{"Datacenter": "dc3"}]}}},
         "Invalid prepared query: Targets cannot be populated with NearestN or Datacenters"),
        ({"Name": "v", "Service": {"Service": "s", "NodeMeta": {"bad key": "x"}}},
         "Invalid prepared query: Couldn't load metadata pair ('bad key', 'x'): Key contains invalid characters"),
        ({"Name": "v", "Service": {"Service": "s"}, "DNS": {"TTL": "soon"}}, 'Invalid prepared query: Bad DNS TTL \'soon\': time: invalid duration "soon"'),
        ({"Name": "v", "Service": {"Service": "s"}, "DNS": {"TTL": "-5s"}}, "Invalid prepared query: DNS TTL '-5000000000', must be >=0"),
        ({"ID": "11111111-1111-1111-1111-111111111111", "Name": "v", "Service": {"Service": "s"}}, "ID must be empty when creating a new prepared query"),
        ({"Name": "v", "Session": "nope", "Service": {"Service": "s"}}, 'invalid session "nope"'),
        ({"Name": "v", "Template": {"Type": "bogus"}, "Service": {"Service": "s"}}, "failed compiling template: Bad Template.Type 'bogus'"),
        ({"Name": "v", "Template": {"Type": "name_prefix_match", "Regexp": "x[a-z"}, "Service": {"Service": "s"}},
         "failed compiling template: Bad Regexp: error parsing regexp: missing closing ]: `[a-z`"),
        ({"Name": "v", "Template": {"Type": "name_prefix_match"}, "Service": {"Service": "${nope}"}},
         "failed compiling template: Bad evaluation for '${nope}' in Service.Service: 1:3: unknown variable accessed: nope"),
        ({"Name": "v", "Template": {"Type": "name_prefix_match"}, "Service": {"Service": "s", "Tags": ["${match(1"]}},
         "failed compiling template: Bad format '${match(1' in Service.Tags[0]"),
        ({"Bogus": 1}, 'Request decode failed: json: unknown field "Bogus"'),
        ({"Name": "v", "Service": {"Servic": "s"}}, 'Request decode failed: json: unknown field "Servic"'),
        ({"Name": 5}, "Request decode failed: Name: expected a string"),
        ({"Name": "v", "Service": {"Service": "s", "Tags": "a"}}, "Request decode failed: Service.Tags: expected a list of strings"),
        (None, "Request decode failed: EOF"),
    ],
)
async def test_invalid_queries_are_400_and_nothing_is_created(api, body, text):
    before = (await api.get("/v1/query")).json()
    r = await api.post("/v1/query", content=b"" if body is None else None, json=body)
    assert r.status_code == 400, r.text
    assert r.text.startswith(text), r.text
    assert (await api.get("/v1/query")).json() == before


async def test_invalid_update_leaves_the_query_alone(api):
    qid = await create(api, {"Name": "upd-q", "Service": {"Service": "s"}})
    [before] = (await api.get(f"/v1/query/{qid}")).json()
    r = await api.put(f"/v1/query/{qid}", content=b"")
    assert (r.status_code, r.text) == (400, "Invalid prepared query: Must be bound to a session")
    r = await api.put(f"/v1/query/{qid}", json={"Name": "upd-q", "Service": {"Service": ""}})
    assert (r.status_code, r.text) == (400, "Invalid prepared query: Must provide a Service name to query")
    assert (await api.get(f"/v1/query/{qid}")).json() == [before]


async def test_bad_execute_parameters(api):
    await create(api, {"Name": "param-q", "Service": {"Service": "s"}})
    r = await api.get("/v1/query/param-q/execute", params={"limit": "lots"})
    assert (r.status_code, r.text) == (400, 'Bad limit: strconv.Atoi: parsing "lots": invalid syntax')
    r = await api.get("/v1/query/param-q/execute", params={"connect": "maybe"})
    assert (r.status_code, r.text) == (400, "Error parsing 'connect' value: strconv.ParseBool: parsing \"maybe\": invalid syntax")
    r = await api.get("/v1/query/param-q/execute", params={"stale": "", "consistent": ""})
    assert r.status_code == 400


async def test_query_bound_to_a_session_goes_with_it(api):
    r = await api.put("/v1/session/create", json={"Name": "pq-owner"})
    sid = r.json()["ID"]
    qid = await create(api, {"Session": sid, "Service": {"Service": "anon"}})  # anonymous, so bound to a session
    [q] = (await api.get(f"/v1/query/{qid}")).json()
    assert q["Session"] == sid
    assert (await api.put(f"/v1/session/destroy/{sid}")).json() is True
    assert (await api.get(f"/v1/query/{qid}")).status_code == 404
    assert qid not in [x["ID"] for x in (await api.get("/v1/query")).json()]


async def test_blocking_list_and_get(api):
    qid = await create(api, {"Name": "blk-q", "Service": {"Service": "s"}})
    r = await api.get("/v1/query")
    index = int(r.headers["X-Consul-Index"])
    assert r.headers["X-Consul-KnownLeader"] == "true"
    started = time.monotonic()
    lister = asyncio.create_task(api.get("/v1/query", params={"index": str(index), "wait": "10s"}))
    getter = asyncio.create_task(api.get(f"/v1/query/{qid}", params={"index": str(index), "wait": "10s"}))
    await asyncio.sleep(0.1)
    assert not lister.done() and not getter.done()
    other = await create(api, {"Name": "blk-q2", "Service": {"Service": "s"}})
    r = await asyncio.wait_for(lister, 5)
    assert int(r.headers["X-Consul-Index"]) > index and other in [x["ID"] for x in r.json()]
    assert time.monotonic() - started < 5
    await asyncio.sleep(0.1)
    assert not getter.done()  # another query's change does not wake a watcher of this one
    assert (await api.put(f"/v1/query/{qid}", json={"Name": "blk-q", "Service": {"Service": "s2"}})).status_code == 200
    r = await asyncio.wait_for(getter, 5)
    assert r.json()[0]["Service"]["Service"] == "s2"
    assert time.monotonic() - started < 5


async def test_pyconsul_query_create_get_execute_delete(dev_agent):
    import consul

    def run() -> None:
        c = consul.Consul(host="127.0.0.1", port=dev_agent.http_port)
        node = dev_agent.config["node_name"]
        c.catalog.register(node, "127.0.0.1", service={"Service": "pyq-svc", "ID": "pyq-1", "Tags": ["blue"], "Port": 8080})
        # py-consul always sends Template {"Type": "name_prefix_match"}: its queries are templates, run by name.
        created = c.query.create("pyq-svc", name="pyq", tags=["blue"], ttl="10s", onlypassing=False)
        qid = created["ID"]
        [q] = c.query.get(qid)
        assert (q["Name"], q["Service"]["Service"], q["Service"]["Tags"], q["DNS"]["TTL"]) == ("pyq", "pyq-svc", ["blue"], "10s")
        assert qid in [x["ID"] for x in c.query.list()]
        result = c.query.execute("pyq")
        assert result["Service"] == "pyq-svc" and [n["Service"]["ID"] for n in result["Nodes"]] == ["pyq-1"]
        assert c.query.explain("pyq")["Query"]["ID"] == qid
        assert c.query.update(qid, "pyq-svc", name="pyq", tags=["green"]) is True
        assert c.query.execute("pyq")["Nodes"] == []
        assert c.query.delete(qid) is True
        assert c.query.get(qid) is None

    await asyncio.to_thread(run)
