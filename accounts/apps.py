from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """Who acts: API tokens, the roles and their permissions, sign-in protection."""

    name = "accounts"
    verbose_name = "Accounts"
