"""The MCP tests' client: the official MCP Python SDK (`mcp` on PyPI) against our
server, over streamable HTTP or stdio. Prints one JSON object of what it saw.

    mcp_client.py http URL TOKEN SPRITE
    mcp_client.py stdio SPRITE_BINARY API_URL TOKEN SPRITE
"""
import json
import sys

import anyio
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import TextContent


def text_of(result):
    return "\n".join(b.text for b in result.content if isinstance(b, TextContent))


async def session(client, sprite):
    seen = {"protocol": str(client.protocol_version)}
    tools = await client.list_tools()
    seen["tools"] = sorted(t.name for t in tools.tools)
    seen["exec_description"] = next(t.description for t in tools.tools if t.name == "exec")

    async def call(tool, /, **arguments):
        result = await client.call_tool(tool, arguments)
        return {"error": bool(result.is_error), "text": text_of(result)}

    seen["create"] = await call("create_sprite", name=sprite)
    seen["exec"] = await call("exec", sprite=sprite, command="echo $((6*7))")
    seen["exec_fail"] = await call("exec", sprite=sprite, command="echo oops >&2; exit 3")
    seen["exec_cut"] = await call(
        "exec", sprite=sprite, command="yes x | head -c 5000", max_output_bytes=100
    )
    seen["exec_timeout"] = await call("exec", sprite=sprite, command="sleep 30", timeout_seconds=1)
    seen["write"] = await call("write_file", sprite=sprite, path="notes/a.txt", content="first\n")
    seen["read"] = await call("read_file", sprite=sprite, path="notes/a.txt")
    seen["list_files"] = await call("list_files", sprite=sprite, path="notes")
    seen["checkpoint"] = await call("checkpoint_create", sprite=sprite, comment="before the change")
    seen["checkpoints"] = await call("checkpoint_list", sprite=sprite)
    checkpoint = seen["checkpoints"]["text"].split("\t")[0]
    await call("write_file", sprite=sprite, path="notes/a.txt", content="second\n")
    seen["read_changed"] = await call("read_file", sprite=sprite, path="notes/a.txt")
    seen["restore"] = await call("checkpoint_restore", sprite=sprite, checkpoint=checkpoint)
    seen["read_restored"] = await call("read_file", sprite=sprite, path="notes/a.txt")
    seen["list"] = await call("list_sprites")
    seen["url"] = await call("sprite_url", sprite=sprite)
    seen["missing"] = await call("exec", sprite="no-such-sprite", command="true")
    seen["destroy"] = await call("destroy_sprite", sprite=sprite)
    return seen


async def main():
    mode = sys.argv[1]
    if mode == "http":
        url, token, sprite = sys.argv[2:5]
        headers = {"Authorization": f"Bearer {token}"}
        async with create_mcp_http_client(headers=headers) as http:
            async with Client(streamable_http_client(url, http_client=http)) as client:
                seen = await session(client, sprite)
    else:
        binary, api, token, sprite = sys.argv[2:6]
        params = StdioServerParameters(
            command=binary,
            args=["mcp"],
            env={"SPRITES_API_URL": api, "SPRITE_TOKEN": token},
        )
        async with Client(params) as client:
            seen = await session(client, sprite)
    print(json.dumps(seen))


anyio.run(main)
