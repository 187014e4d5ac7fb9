"""`manage.py run_demo`: what `make run` does — a ready-to-try gateway in front of a local fake provider.

Migrates, starts the fake provider, imports config/demo.yaml pointed at it, creates an admin user and an API key,
prints how to use them, and serves the gateway with uvicorn until interrupted.
"""

import secrets
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from routing.auth import api_key_create
from routing.config_io import load_config_file, routing_config_import

DEMO_CONFIG = Path(settings.BASE_DIR) / "config" / "demo.yaml"


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
        call_command("migrate", verbosity=0)
        fake = subprocess.Popen(
            [sys.executable, "-m", "routing.fake_provider", "--port", str(fake_port), "--chunk-delay-ms", "30"],
            cwd=settings.BASE_DIR,
        )
        try:
            data = load_config_file(DEMO_CONFIG)
            for entry in data["model_list"]:
                entry["litellm_params"]["api_base"] = f"http://127.0.0.1:{fake_port}/v1"
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
