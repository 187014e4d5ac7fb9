"""Admin forms: write-only upstream keys, comma-separated lists, tri-state metadata overrides."""

from django import forms
from django.core.exceptions import ValidationError

from routing import metadata, secrets
from routing.models import (
    Model,
    Provider,
    ProviderInstance,
)

API_KEY_HELP = (
    "Leave blank to keep the current key. Use os.environ/NAME to read it from the gateway's environment. "
    "Shown only as its last 4 characters."
)


class UpstreamSecretForm(forms.ModelForm):
    """A form whose upstream key is write-only: type one to replace it, leave blank to keep it, tick to clear it."""

    api_key = forms.CharField(
        label="New API key",
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=API_KEY_HELP,
    )
    clear_api_key = forms.BooleanField(label="Clear API key", required=False, help_text="Remove the stored key.")

    def clean_api_key(self):
        """Reject an `os.environ/` reference without a usable variable name."""
        value = self.cleaned_data["api_key"]
        if value.startswith(secrets.ENV_PREFIX):
            name = secrets.env_reference_name(value)
            max_length = self._meta.model._meta.get_field("api_key_env").max_length
            if not name:
                raise ValidationError("Name the environment variable: os.environ/NAME.")
            if len(name) > max_length:
                raise ValidationError(f"The environment variable name is longer than {max_length} characters.")
        return value

    def clean(self):
        """Refuse a new key and 'clear' at the same time."""
        cleaned = super().clean()
        if cleaned.get("api_key") and cleaned.get("clear_api_key"):
            raise ValidationError("Either type a new API key or tick 'Clear API key', not both.")
        return cleaned

    def save(self, commit=True):
        """Apply a typed or cleared key to the instance, then save as usual."""
        if self.cleaned_data.get("api_key"):
            self.instance.set_api_key(self.cleaned_data["api_key"])
        elif self.cleaned_data.get("clear_api_key"):
            self.instance.set_api_key("")
        return super().save(commit)


class ProviderForm(UpstreamSecretForm):
    """Provider form with a write-only key."""

    class Meta:
        model = Provider
        fields = ("name", "kind", "api_base", "openai_compatible")


class ProviderInstanceForm(UpstreamSecretForm):
    """Instance form with a write-only key of its own (without one the provider's key is used)."""

    clear_api_key = forms.BooleanField(
        label="Clear API key", required=False, help_text="Remove this instance's key so it uses its provider's."
    )
    credential_params = forms.JSONField(
        label="Set credential parameters",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "autocomplete": "off"}),
        help_text=(
            'Write-only, e.g. {"aws_secret_access_key": "…"}: each is stored encrypted (an os.environ/NAME value as a '
            'reference); null or "" removes one. Names must contain key, secret, token, credentials or password.'
        ),
    )

    class Meta:
        model = ProviderInstance
        fields = (
            "id",
            "model",
            "provider",
            "litellm_model",
            "api_base",
            "api_base_env",
            "params",
            "weight",
            "rpm",
            "tpm",
            "timeout",
            "stream_timeout",
            "enabled",
            "drained",
        )

    def clean_params(self):
        """Refuse credentials among the plain parameters (they belong in the write-only field) and non-mappings."""
        params = self.cleaned_data.get("params") or {}
        if not isinstance(params, dict):
            raise ValidationError('A mapping of litellm_params, e.g. {"api_version": "2024-06-01"}.')
        literal = [k for k, v in params.items() if secrets.is_secret_param(k) and not secrets.env_reference_name(v)]
        if literal:
            raise ValidationError(f"Put {', '.join(literal)} in 'Set credential parameters' (stored encrypted).")
        return params

    def clean_credential_params(self):
        """Accept only a mapping of credential names to values."""
        value = self.cleaned_data.get("credential_params")
        if value in (None, ""):
            return {}
        if not isinstance(value, dict) or not all(secrets.is_secret_param(k) for k in value):
            raise ValidationError("A mapping of credential parameter names (with key, secret, token, …) to values.")
        return value

    def save(self, commit=True):
        """Encrypt the credential parameters typed, then save as usual."""
        for name, value in self.cleaned_data.get("credential_params", {}).items():
            self.instance.set_secret_param(name, value)
        return super().save(commit)


class CommaSeparatedListField(forms.CharField):
    """A text input for a list of strings, written comma-separated."""

    def prepare_value(self, value):
        """Render a list as 'a, b, c'."""
        if isinstance(value, (list, tuple)):
            return ", ".join(str(item) for item in value)
        return value

    def to_python(self, value):
        """Return the non-empty, de-duplicated items in the order typed."""
        if isinstance(value, (list, tuple)):
            return list(value)
        text = super().to_python(value) or ""
        return list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


class OverrideSelect(forms.NullBooleanSelect):
    """A yes / no / "from the litellm map" choice for a tri-state metadata override."""

    def __init__(self, attrs=None):
        super().__init__(attrs)
        self.choices = (("unknown", "From the litellm map"), ("true", "Yes"), ("false", "No"))


class PublicModelForm(forms.ModelForm):
    """Model form with capabilities edited as comma-separated text and tri-state metadata overrides."""

    capabilities = CommaSeparatedListField(
        required=False,
        help_text="Comma-separated capability tags, e.g. code_generation, code_review, math, analysis, "
        "creative_writing, summarization, translation, question_answering, general_chat.",
    )
    fallbacks = CommaSeparatedListField(
        required=False, help_text="Comma-separated model names tried in this order when this model cannot serve."
    )
    context_window_fallbacks = CommaSeparatedListField(
        required=False,
        help_text="Comma-separated model names used instead, in this order, for a request too long for this model.",
    )

    class Meta:
        model = Model
        fields = (
            "name",
            "description",
            "enabled",
            "mode",
            "strategy",
            "capabilities",
            "fallbacks",
            "context_window_fallbacks",
            "context_window",
            "supports_function_calling",
            "supports_vision",
            "supports_response_schema",
            "input_cost_per_mtok",
            "output_cost_per_mtok",
        )
        widgets = {field: OverrideSelect for field in metadata.FEATURES}

    def clean(self):
        """Refuse fallbacks that name no model, or the model itself."""
        cleaned = super().clean()
        for field in ("fallbacks", "context_window_fallbacks"):
            names = cleaned.get(field) or []
            known = set(Model.objects.filter(name__in=names).values_list("name", flat=True))
            unknown = [name for name in names if name not in known]
            if unknown:
                self.add_error(field, f"No such model: {', '.join(unknown)}.")
            elif cleaned.get("name") in names:
                self.add_error(field, "A model cannot be its own fallback.")
        return cleaned


class ProviderInstanceInlineForm(forms.ModelForm):
    """Inline instance row: the id can be chosen for a new instance but not changed afterwards."""

    class Meta:
        model = ProviderInstance
        fields = ("id", "provider", "litellm_model", "api_base", "weight", "timeout", "stream_timeout", "enabled")

    def __init__(self, *args, **kwargs):
        """Lock the id of saved rows."""
        super().__init__(*args, **kwargs)
        if not self.instance._state.adding:
            # Not `disabled`: browsers omit disabled inputs, and the formset needs the posted id to find the row.
            self.fields["id"].widget.attrs["readonly"] = True

    def clean_id(self):
        """Keep a saved row's id whatever was posted (a changed primary key would copy the row)."""
        if not self.instance._state.adding:
            return self.instance.pk
        return self.cleaned_data["id"]
