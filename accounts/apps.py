from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """Who acts: API tokens, the roles and their permissions, sign-in protection."""

    name = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.contrib.auth.models import Group
        from django.db.models.signals import m2m_changed, post_delete, post_save

        from .auth import forget_tokens
        from .models import ApiToken

        # Who a token is and what it may do is cached (accounts.auth): any change to them empties it.
        user_model = get_user_model()
        for model in (ApiToken, user_model, Group):
            post_save.connect(forget_tokens, sender=model, dispatch_uid=f"accounts.forget.{model.__name__}")
            post_delete.connect(
                forget_tokens, sender=model, dispatch_uid=f"accounts.forget_d.{model.__name__}"
            )
        for through in (
            user_model.groups.through,
            user_model.user_permissions.through,
            Group.permissions.through,
        ):
            m2m_changed.connect(
                forget_tokens, sender=through, dispatch_uid=f"accounts.forget.{through.__name__}"
            )
