"""`manage.py run_demo`: what `make run` does — a ready-to-try gateway in front of a local fake provider.

Migrates, starts the fake provider, imports config/demo.yaml pointed at it, creates an admin user and an API key,
prints how to use them, and serves the gateway with uvicorn until interrupted.

It first makes sure it can do all of that, and stops with a clear message before changing anything when it cannot:
when a demo already runs on the same database (it would reset that demo's admin password and point its models at
another fake provider), when a port is taken, or when the settings would make the plain-http admin unusable.
"""

import fcntl
import hashlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from routing.auth import api_key_create
from routing.config_io import load_config_file, routing_config_import

DEMO_CONFIG = Path(settings.BASE_DIR) / "config" / "demo.yaml"
# Settings that make the admin unusable over the demo's plain http (the defaults whenever DEBUG is off).
HTTPS_ONLY = ("SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE")
# The fake provider listens on the loopback only, whatever --host the gateway is given.
FAKE_HOST = "127.0.0.1"


class Command(BaseCommand):
    """Run the demo gateway."""

    help = "Start a demo ChatVault (fake provider, demo config, admin user, API key) and serve it."

    def add_arguments(self, parser):
        """Declare the command's arguments."""
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--fake-port", type=int, default=8001)

    def handle(self, *args, host, port, fake_port, **options):
        """Prepare everything, then serve until interrupted."""
        refuse_https_only_settings()
        lock = claim_database(f"http://{host}:{port}")
        refuse_taken_ports([(host, port, "PORT"), (FAKE_HOST, fake_port, "FAKE_PORT")])
        try:
            self._run(host, port, fake_port)
        finally:
            lock.close()

    def _run(self, host, port, fake_port):
        """Migrate, start the fake provider, import the demo config, make the admin and a key, and serve."""
        call_command("migrate", verbosity=0)
        fake_command = [sys.executable, "-m", "routing.fake_provider", "--host", FAKE_HOST, "--port", str(fake_port)]
        fake = subprocess.Popen([*fake_command, "--chunk-delay-ms", "30"], cwd=settings.BASE_DIR)
        try:
            data = load_config_file(DEMO_CONFIG)
            for entry in data["model_list"]:
                entry["litellm_params"]["api_base"] = f"http://{FAKE_HOST}:{fake_port}/v1"
            routing_config_import(data=data)
            password = secrets.token_urlsafe(12)
            user, _ = get_user_model().objects.get_or_create(
                username="admin", defaults={"is_staff": True, "is_superuser": True}
            )
            user.is_staff = user.is_superuser = True
            user.set_password(password)
            user.save()
            _, raw_key = api_key_create(name="make run demo key")
            self._print_welcome(host, port, password, raw_key)
            subprocess.run(
                [sys.executable, "-m", "uvicorn", "chatvault_site.asgi:application", "--host", host,
                 "--port", str(port), "--no-access-log"],
                cwd=settings.BASE_DIR,
                check=False,
            )  # fmt: skip
        except KeyboardInterrupt:
            pass
        finally:
            fake.terminate()
            fake.wait(timeout=10)

    def _print_welcome(self, host, port, password, raw_key):
        """Print the admin login, the API key and copy-paste examples."""
        base = f"http://{host}:{port}"
        self.stdout.write(
            f"""
ChatVault demo is starting on {base}

  Admin:    {base}/admin/   user: admin   password: {password}
  API key:  {raw_key}

Try it:

  curl {base}/v1/chat/completions \\
    -H "Authorization: Bearer {raw_key}" -H "Content-Type: application/json" \\
    -d '{{"model": "vault-gpt-4o-mini", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  curl {base}/v1/embeddings \
    -H "Authorization: Bearer {raw_key}" -H "Content-Type: application/json" \
    -d '{{"model": "vault-embed-small", "input": ["first text", "second text"]}}'

  {sys.executable} -c '
from openai import OpenAI
client = OpenAI(base_url="{base}/v1", api_key="{raw_key}")
for chunk in client.chat.completions.create(model="vault-gpt-4o-mini", stream=True,
        messages=[{{"role": "user", "content": "Hello!"}}]):
    print(chunk.choices[0].delta.content or "", end="", flush=True) if chunk.choices else None
print()'

Every request is recorded in Request logs in the admin. Stop with Ctrl-C.
"""
        )


def refuse_https_only_settings():
    """Raise CommandError if a setting would send the demo's plain-http admin to https or drop its cookies."""
    on = [name for name in HTTPS_ONLY if getattr(settings, name)]
    if on:
        lines = "\n".join(f"  {name}=false" for name in HTTPS_ONLY)
        raise CommandError(
            f"The demo serves plain http, but {', '.join(on)} {'is' if len(on) == 1 else 'are'} on (the default "
            "whenever DEBUG is off), so the admin would redirect to https or lose its sign-in cookie. Nothing was "
            f"changed. Add these lines to .env (a .env that make run wrote before they existed lacks them):\n{lines}"
        )


def claim_database(url):
    """Return the open lock file that marks a demo running on this database; raise CommandError if another holds it.

    The lock is an flock on a file named after the database, released by the kernel when this process ends however
    it ends, so a demo that crashed never blocks the next one.
    """
    db = settings.DATABASES["default"]
    identity = f"{db['ENGINE']}|{db.get('HOST') or ''}|{db.get('PORT') or ''}|{db['NAME']}"
    path = Path(tempfile.gettempdir()) / f"chatvault-demo-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.lock"
    lock = path.open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        running = lock.read().strip() or "another process"
        lock.close()
        raise CommandError(
            f"A ChatVault demo is already running on this database ({running}). Nothing was changed: its admin "
            "password and API key still work. Use it, or stop it (Ctrl-C in its terminal) before starting another."
        ) from None
    lock.truncate(0)
    lock.write(f"pid {os.getpid()}, {url}")
    lock.flush()
    return lock


def refuse_taken_ports(addresses):
    """Raise CommandError naming each (host, port, make variable) of addresses that cannot be listened on."""
    taken = []
    for host, port, variable in addresses:
        with socket.socket() as sock:
            # As uvicorn and the fake provider bind: a port left in TIME_WAIT by a demo that just stopped is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                taken.append(f"{variable}={port} on {host} ({exc.strerror})")
    if taken:
        raise CommandError(
            f"Cannot listen on {' and '.join(taken)}: is a demo already running there? Nothing was changed. Stop "
            "what uses the port, or choose free ones, e.g. make run PORT=8010 FAKE_PORT=8011"
        )
