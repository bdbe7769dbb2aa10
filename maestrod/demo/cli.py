"""A command-line client of the to-do service (contract todos-api v1).

  python3 src/ui/cli.py [--url URL] list
  python3 src/ui/cli.py [--url URL] add TITLE...
  python3 src/ui/cli.py [--url URL] done ID
"""

import argparse
import json
import sys
import urllib.error
import urllib.request


def request(url, method="GET", body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read())


def format_todos(todos):
    """One line per to-do: a check box, the id and the title."""
    if not todos:
        return "nothing to do"
    return "\n".join(f"[{'x' if t['done'] else ' '}] {t['id']:>3}  {t['title']}" for t in todos)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="todo")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list")
    add = commands.add_parser("add")
    add.add_argument("title", nargs="+")
    done = commands.add_parser("done")
    done.add_argument("id", type=int)
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            print(format_todos(request(f"{args.url}/todos")))
        elif args.command == "add":
            print(format_todos([request(f"{args.url}/todos", "POST", {"title": " ".join(args.title)})]))
        else:
            print(format_todos([request(f"{args.url}/todos/{args.id}/done", "POST")]))
    except urllib.error.HTTPError as error:
        print(f"todo: {error.code} {json.loads(error.read()).get('error')}", file=sys.stderr)
        return 1
    except urllib.error.URLError as error:
        print(f"todo: cannot reach {args.url}: {error.reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
