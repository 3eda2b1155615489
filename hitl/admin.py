"""The admin of approval requests: pending first, cheap at any size, and every decision through the service.

Nothing here writes an `ApprovalRequest`: the actions and the change page call
`hitl.services.approval_decide` (channel "admin", user `request.user`), exactly like the REST API,
the approval page and the WebSocket, so every surface decides the same way and publishes the same
event. The admin never gets the change permission (there is no model form to save); deciding needs
`hitl.decide_approvalrequest`, viewing needs the view permission (or the decide one).
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Iterator
from typing import Any, Literal

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.templatetags.admin_urls import add_preserved_filters
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ORDER_VAR, ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import Case, DateTimeField, F, IntegerField, Q, QuerySet, Value, When
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import localize
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.timesince import timeuntil
from django.utils.timezone import localtime

from audit.perms import VIEW_AUDIT
from core.admin_kit import DateRangeFilter, short, text_search
from core.errors import ApplicationError
from core.json_input import check_form_encoding, check_object, parse_json
from events.traces import session_link

from .conf import hitl_settings
from .inputs import MAX_TEXT, PolicyProbeIn, validated
from .models import ApprovalRequest, ApprovalRule, ApprovalStatus, DecisionChannel, StandingApproval
from .policies import (
    RULE_FIELDS,
    compile_rule,
    evaluate,
    policy_dry_run,
    rule_clean,
    rule_create,
    rule_delete,
    rule_set_enabled,
    rule_update,
    standing_revoke,
)
from .services import approval_decide, args_digest, decision_of, user_may_decide, validate_against_schema

# At most this many requests per bulk action: each is its own transaction and event.
BULK_LIMIT = 500
# The value filters suggest the values of the newest pending requests, read through the status index.
SUGGESTION_ROWS = 500
SUGGESTIONS = 15
# Ids are cut to this many characters in the list (the whole id is the cell's title).
SHORT_ID = 22
CONFLICTS = ("already_decided", "expired", "not_found")
# The search's text fields (besides a call id's beginning), each with an index that serves it.
SEARCHED = ("tool_name", "agent", "session_id")


def pretty_json(value: Any, *, sort_keys: bool = False) -> str:
    """Arguments as an operator reads and edits them: indented, non-ASCII kept."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=sort_keys)


def _json_block(value: Any) -> SafeString:
    return format_html('<pre class="hitl-json">{}</pre>', pretty_json(value))


class ArgumentsError(ValueError):
    """The edited arguments are not a JSON object this page can send to the service."""


def parse_arguments(text: str, field: str = "arguments") -> dict[str, Any]:
    """The edited arguments as a JSON object, through the one JSON entrance (core.json_input: syntax,
    NaN, a key twice, depth, NUL, lone surrogates, HITL_MAX_ARGUMENTS_BYTES); else ArgumentsError
    saying what is wrong and where (`field`, or the dotted path inside it)."""
    if not text.strip():
        raise ArgumentsError("Enter the arguments as a JSON object, e.g. {}.")
    try:
        value = parse_json(text, field)
        if not isinstance(value, dict):
            raise ArgumentsError(
                f"The arguments must be a JSON object ({{...}}), not {type(value).__name__}."
            )
        return check_object(value, field, max_bytes=hitl_settings().max_arguments_bytes)
    except ApplicationError as error:
        errors = error.extra.get("errors") or [{}]
        where = str(errors[0].get("field") or field)
        message = str(errors[0].get("message") or error.message)
        raise ArgumentsError(f"This {message}." if where == field else f"{where}: {message}.") from None


def arguments_diff(proposed: dict[str, Any], edited: dict[str, Any]) -> list[dict[str, str]]:
    """A line diff of the two argument sets, pretty-printed with sorted keys so only content differs."""
    before = pretty_json(proposed, sort_keys=True).splitlines()
    after = pretty_json(edited, sort_keys=True).splitlines()
    lines = []
    # Whole documents as context: arguments are short, and the operator should see all they approve.
    for line in difflib.unified_diff(before, after, lineterm="", n=max(len(before), len(after))):
        if line.startswith(("---", "+++", "@@")):
            continue
        sign, text = line[:1], line[1:]
        kind = {"-": "removed", "+": "added"}.get(sign, "same")
        lines.append({"kind": kind, "sign": sign.strip(), "text": text})
    return lines


def changed_keys(proposed: dict[str, Any], edited: dict[str, Any]) -> dict[str, list[str]]:
    """The top-level keys the edit added, removed and changed."""
    return {
        "added": sorted(set(edited) - set(proposed)),
        "removed": sorted(set(proposed) - set(edited)),
        "changed": sorted(k for k in set(proposed) & set(edited) if json_differs(proposed[k], edited[k])),
    }


def json_differs(a: Any, b: Any) -> bool:
    """Whether two JSON values differ, the way the service's hash sees them (1 and true do)."""
    return args_digest("", {"v": a}) != args_digest("", {"v": b})


def state_phrase(request: ApprovalRequest) -> str:
    """Where a request stands, for an operator who could not decide it: "already rejected by bob"."""
    if request.status == ApprovalStatus.PENDING:
        return "expired" if request.expires_at <= timezone.now() else "still pending"
    phrase = f"already {request.get_status_display()}"
    if request.decided_by_username:
        phrase += f" by {request.decided_by_username}"
    return phrase


class DecideForm(forms.Form):
    """The change page's decision: the arguments (JSON, edited or not) and a comment."""

    arguments = forms.CharField(
        required=False,
        strip=False,
        label="Arguments (JSON)",
        help_text="Edit and use “Approve with edits” to run the tool with other arguments; "
        "you will see the difference before anything is saved.",
        widget=forms.Textarea(attrs={"rows": 14, "cols": 80, "class": "vLargeTextField hitl-json-input"}),
    )
    comment = forms.CharField(
        required=False,
        max_length=MAX_TEXT,
        label="Comment",
        help_text="Optional; the agent gets it with the decision, and it goes into the audit trail.",
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80, "class": "vLargeTextField"}),
    )


class RejectSelectedForm(forms.Form):
    comment = forms.CharField(
        required=False,
        max_length=MAX_TEXT,
        label="Comment",
        help_text="Optional: why, for the agents and the audit trail. The same comment goes to each request.",
        widget=forms.Textarea(attrs={"rows": 4, "cols": 80, "class": "vLargeTextField"}),
    )


def by_deadline(queryset: QuerySet[ApprovalRequest]) -> QuerySet[ApprovalRequest]:
    """Pending requests first, the nearest deadline first; then the others, newest first."""
    pending = Q(status=ApprovalStatus.PENDING)
    return queryset.annotate(
        pending_rank=Case(When(pending, then=Value(0)), default=Value(1), output_field=IntegerField()),
        deadline=Case(When(pending, then=F("expires_at")), default=None, output_field=DateTimeField()),
    ).order_by("pending_rank", F("deadline").asc(nulls_last=True), "-created_at", "-pk")


def decider(obj: ApprovalRequest) -> str:
    """Who decided, as a column shows it: the person; else what decided (the expiry, a policy)."""
    if obj.status == ApprovalStatus.PENDING:
        return "—"
    if obj.decided_by_username:
        return obj.decided_by_username
    if obj.channel:
        return str(obj.get_channel_display())  # "expiry", "approval policy"
    if obj.status == ApprovalStatus.CANCELLED:
        return "the agent (withdrawn)"
    return "—"


class ValueFilter(admin.SimpleListFilter):
    """An exact-value filter typed into a box, with the values of recent pending requests as links.

    Django's default filter for a CharField (AllValuesFieldListFilter) runs SELECT DISTINCT over the
    whole table on every changelist load: a scan of every row (or every index entry) at a million rows.
    Here a typed value is an exact match, served by the (field, -created_at) index, and the links come
    from the newest SUGGESTION_ROWS pending requests only, a bounded read of the (status, -created_at)
    index whatever the size of the table. Pending requests are what an operator filters for.
    """

    template = "admin/hitl/approvalrequest/value_filter.html"
    field_name = ""
    hidden_params: list[tuple[str, str]]

    def __init__(self, request: HttpRequest, params: dict[str, Any], model: Any, model_admin: Any) -> None:
        super().__init__(request, params, model, model_admin)
        key = str(self.parameter_name)
        if self.used_parameters.get(key) == "":
            del self.used_parameters[key]  # an empty box means no filter
        self.hidden_params = []

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        recent = (
            ApprovalRequest.objects.filter(status=ApprovalStatus.PENDING)
            .order_by("-created_at")
            .values_list(self.field_name, flat=True)[:SUGGESTION_ROWS]
        )
        values = sorted({value for value in recent if value})[:SUGGESTIONS]
        return [(value, value) for value in values]

    def has_output(self) -> bool:
        return True  # the box, even when nothing is pending

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value is None:
            return queryset
        return queryset.filter(**{self.field_name: value})

    def choices(self, changelist: ChangeList) -> Iterator[Any]:
        # The box's form keeps the other filters, the search and the ordering (and restarts paging).
        self.hidden_params = [(k, str(v)) for k, v in changelist.params.items() if k != self.parameter_name]
        yield from super().choices(changelist)


class ToolNameFilter(ValueFilter):
    title = "tool"
    parameter_name = "tool_name"
    field_name = "tool_name"


class AgentFilter(ValueFilter):
    title = "agent"
    parameter_name = "agent"
    field_name = "agent"


class RuleFilter(ValueFilter):
    title = "rule"
    parameter_name = "rule"
    field_name = "rule"


class CreatedRangeFilter(DateRangeFilter):
    title = "created"
    field_name = "created_at"


class ApprovalChangeList(ChangeList):
    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet[Any]:
        # The rows show neither arguments nor texts, which may be large: fifty rows need not load them.
        queryset = super().get_queryset(request, exclude_parameters)
        return queryset.defer("arguments", "modified_args", "reason", "comment")

    def get_ordering_field_columns(self) -> dict[int, Literal["desc", "asc"]]:
        # Unless a header was clicked, mark the column the rows are really in the order of: the
        # deadline (pending first, or pending alone), else creation. Django would mark the model's
        # Meta.ordering (creation) whatever get_ordering says.
        if ORDER_VAR in self.params or "expires" not in self.list_display:
            return super().get_ordering_field_columns()
        status = self.params.get("status__exact")
        if status is None or status == ApprovalStatus.PENDING:
            return {self.list_display.index("expires"): "asc"}
        return {self.list_display.index("created"): "desc"} if "created" in self.list_display else {}


@admin.register(ApprovalRequest)
class ApprovalRequestAdmin(admin.ModelAdmin):
    # Nine columns in the width a desk's screen leaves beside the two sidebars (1400 px): ids are cut
    # short (the whole id is the cell's title and the change page's), and no cell holds free text.
    list_display = (
        "call",
        "tool_name",
        "agent",
        "session",
        "status",
        "created",
        "expires",
        "decided_by_name",
        "rule_shown",
    )
    list_display_links = ("call",)
    # status: its choices, no query; the date range is on created_at.
    list_filter = ("status", ToolNameFilter, AgentFilter, RuleFilter, CreatedRangeFilter)
    # Search is exact on session_id and a prefix of call_id (get_search_results): both use an index.
    search_fields = ("call_id", "session_id")
    search_help_text = (
        "The beginning of a call id, or of a tool, agent or session (anywhere in them on PostgreSQL)."
    )
    show_full_result_count = False  # no second COUNT(*) of the whole table
    show_facets = admin.ShowFacets.NEVER  # facets are one COUNT per filter value
    list_select_related = False  # no relation is shown (decided_by_username is a column)
    list_per_page = 50
    actions = ["approve_selected", "reject_selected"]
    change_form_template = "admin/hitl/approvalrequest/change_form.html"
    readonly_fields = (
        "decided_by_name",
        "time_left",
        "proposed_arguments",
        "run_arguments",
        "edit_diff",
    )

    # Permissions: read-only model admin; deciding is its own permission.

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # requests come from agents

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # no model form: decisions go through approval_decide

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Auditors (who read the audit trail) read approval requests here too, read-only: the admin
        # is their desk. The approval page and the API stay the operators'.
        return (
            super().has_view_permission(request, obj)
            or user_may_decide(request.user)
            or request.user.has_perm(VIEW_AUDIT)
        )

    def has_module_permission(self, request: HttpRequest) -> bool:
        # So that the admin's index and sidebar list approval requests for auditors too.
        return super().has_module_permission(request) or request.user.has_perm(VIEW_AUDIT)

    def has_decide_permission(self, request: HttpRequest) -> bool:
        """Who sees and may use the decide actions and buttons (the service checks again)."""
        return user_may_decide(request.user)

    # Changelist

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return ApprovalChangeList

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApprovalRequest]:
        queryset = self.model._default_manager.get_queryset()
        status = request.GET.get("status__exact")
        if status == ApprovalStatus.PENDING:
            # The nearest deadline first: what an operator must decide before it runs out. The
            # (status, expires_at) index serves it.
            return queryset.order_by("expires_at", "pk")
        if status is not None:
            # One decided status: newest first, as the (status, -created_at) index serves it.
            return queryset.order_by("-created_at", "-pk")
        return by_deadline(queryset)

    def get_ordering(self, request: HttpRequest) -> list[Any]:
        # The changelist puts this ordering before the queryset's own, so it must be the selector's.
        return list(self.get_queryset(request).query.order_by)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[ApprovalRequest], search_term: str
    ) -> tuple[QuerySet[ApprovalRequest], bool]:
        # Django's own search would be icontains: UPPER(...) LIKE, which no index serves. A call id by
        # its beginning (its unique, pattern-ops index); tool, agent and session by their beginning on
        # SQLite and anywhere in them on PostgreSQL (core.admin_kit.text_search, the trigram indexes of
        # migration 0004).
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(Q(call_id__startswith=term) | text_search(queryset, SEARCHED, term)), False

    @admin.display(description="call id")
    def call(self, obj: ApprovalRequest) -> SafeString:
        return format_html('<span title="{}">{}</span>', obj.call_id, short(obj.call_id, SHORT_ID))

    @admin.display(description="session")
    def session(self, obj: ApprovalRequest) -> SafeString | str:
        return session_link(obj.session_id, SHORT_ID)

    @admin.display(description="created", ordering="created_at")
    def created(self, obj: ApprovalRequest) -> SafeString:
        return format_html(
            '<time datetime="{}">{}</time>', obj.created_at.isoformat(), localize(localtime(obj.created_at))
        )

    @admin.display(description="expires", ordering="expires_at")
    def expires(self, obj: ApprovalRequest) -> str:
        if obj.status != ApprovalStatus.PENDING:
            return "—"
        return self.time_left(obj)

    @admin.display(description="decided by")
    def decided_by_name(self, obj: ApprovalRequest) -> str:
        return decider(obj)

    @admin.display(description="rule", ordering="rule")
    def rule_shown(self, obj: ApprovalRequest) -> str:
        return obj.rule or "—"

    @admin.display(description="time left")
    def time_left(self, obj: ApprovalRequest) -> str:
        now = timezone.now()
        if obj.status != ApprovalStatus.PENDING:
            return "—"
        if obj.expires_at <= now:
            return f"overdue: {obj.get_on_expire_display()} on expiry"
        return f"in {timeuntil(obj.expires_at, now)}"

    # Change page

    @admin.display(description="proposed arguments")
    def proposed_arguments(self, obj: ApprovalRequest) -> SafeString:
        return _json_block(obj.arguments)

    @admin.display(description="arguments the tool runs with")
    def run_arguments(self, obj: ApprovalRequest) -> SafeString | str:
        decision = decision_of(obj)
        if decision is None:
            return "—"
        if not decision.approved:
            return "— (the tool does not run)"
        if obj.status == ApprovalStatus.EDITED:
            return _json_block(decision.arguments)
        return "the proposed arguments, unchanged"

    @admin.display(description="edits")
    def edit_diff(self, obj: ApprovalRequest) -> SafeString | str:
        if obj.status != ApprovalStatus.EDITED or obj.modified_args is None:
            return "—"
        rows = [
            format_html(
                '<div class="hitl-diff-{}"><span>{}</span>{}</div>', line["kind"], line["sign"], line["text"]
            )
            for line in arguments_diff(obj.arguments, obj.modified_args)
        ]
        return format_html('<div class="hitl-diff">{}</div>', SafeString("".join(rows)))

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        request_fields = [
            "call_id",
            "session_id",
            "correlation_id",
            "agent",
            "tool_name",
            "reason",
            "created_at",
        ]
        policy = (
            "Policy",
            {
                "fields": [
                    "rule",
                    "approvals_required",
                    "approvals",
                    "approver_group",
                    "escalate_to_group",
                    "escalate_at",
                    "escalated_at",
                    "args_sha256",
                ]
            },
        )
        if obj is not None and obj.is_pending:
            return [
                (None, {"fields": [*request_fields, "expires_at", "time_left", "on_expire"]}),
                policy,
                ("Arguments", {"fields": ["proposed_arguments"]}),
            ]
        return [
            (None, {"fields": [*request_fields, "expires_at", "on_expire"]}),
            policy,
            ("Decision", {"fields": ["status", "decided_by_name", "decided_at", "channel", "comment"]}),
            ("Arguments", {"fields": ["proposed_arguments", "run_arguments", "edit_diff"]}),
        ]

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> HttpResponse:
        if obj is not None and obj.is_pending and self.has_decide_permission(request):
            if context.get("decide_form") is None:
                context["decide_form"] = DecideForm(initial={"arguments": pretty_json(obj.arguments)})
            context["decide_config"] = {
                "proposed": obj.arguments,
                "check_url": reverse("admin:hitl_approvalrequest_check", args=[obj.pk]),
            }
        else:
            context["decide_form"] = None
        context["may_decide"] = self.has_decide_permission(request)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def get_urls(self) -> list[Any]:
        from django.urls import path

        check = path(
            "<path:object_id>/check/",
            self.admin_site.admin_view(self.check_view),
            name="hitl_approvalrequest_check",
        )
        return [check, *super().get_urls()]

    def check_view(self, request: HttpRequest, object_id: str) -> JsonResponse:
        """The Decide panel's live check (POST `arguments`): the errors "Approve with edits" would show,
        JSON Schema included, without saving anything: `{"ok": bool, "errors": [...]}`."""
        if request.method != "POST":
            return JsonResponse({"detail": "POST the arguments.", "code": "method_not_allowed"}, status=405)
        if not self.has_decide_permission(request):
            raise PermissionDenied
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404(f"no approval request has id {object_id!r}")
        form = DecideForm({"arguments": request.POST.get("arguments", ""), "comment": ""})
        form.is_valid()
        try:
            if request.content_type == "application/x-www-form-urlencoded":
                check_form_encoding(request.body)  # as _decide: bad UTF-8 is an error, not U+FFFD
            edited = parse_arguments(form.cleaned_data.get("arguments", ""))
            validate_against_schema(obj.tool_name, edited)
        except ArgumentsError as error:
            form.add_error("arguments", str(error))
        except ApplicationError as error:
            self._form_errors(form, error)
        errors = [str(message) for message in form.errors.get("arguments", [])]
        return JsonResponse({"ok": not errors, "errors": errors})

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        if request.method == "POST":
            return self._decide(request, object_id)
        return super().change_view(request, object_id, form_url, extra_context)

    def _decide(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The change page's buttons: approve, reject, preview an edit, confirm it, or go back to it."""
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            messages.warning(request, f"No approval request has the id {object_id!r}.")
            return HttpResponseRedirect(self._changelist_url(request))
        if not self.has_decide_permission(request):
            raise PermissionDenied
        if not obj.is_pending:
            # Decided already: nothing to save, and no form to show errors on. (The service would
            # refuse too; this only spares the operator a form they can no longer use.)
            return self._conflict(request, obj, state_phrase(obj))
        if request.content_type == "application/x-www-form-urlencoded":
            try:
                # Django would decode bad UTF-8 (a lone surrogate) as U+FFFD: another comment than sent.
                check_form_encoding(request.body)
            except ApplicationError as error:
                form = DecideForm(request.POST)
                form.is_valid()
                self._form_errors(form, error)
                return self._render_change(request, object_id, form)
        form = DecideForm(request.POST)
        form.is_valid()  # the comment's length; the arguments are checked per button below
        action = request.POST.get("_decision", "")
        if action == "back":
            text = request.POST.get("arguments", "")
            try:
                text = pretty_json(parse_arguments(text))
            except ArgumentsError:
                pass  # shown as it came; the operator fixes it
            initial = {"arguments": text, "comment": request.POST.get("comment", "")}
            return self._render_change(request, object_id, DecideForm(initial=initial))
        if action not in ("approve", "reject", "edit", "confirm_edit"):
            form.add_error(None, "Choose Approve, Approve with edits or Reject.")
        if not form.is_valid():
            return self._render_change(request, object_id, form)
        comment = form.cleaned_data["comment"]

        if action == "reject":
            return self._call_service(request, obj, form, "REJECT", comment=comment)
        if action == "approve":
            text = form.cleaned_data["arguments"]
            if text.strip() and not self._unchanged(obj, text):
                # "Approve" runs the proposed arguments: never drop an edit the operator made.
                form.add_error(
                    "arguments",
                    "You changed the arguments, but “Approve” runs the proposed ones. Use “Approve with "
                    "edits” to run yours, or reload the page to discard them.",
                )
                return self._render_change(request, object_id, form)
            return self._call_service(request, obj, form, "APPROVE", comment=comment)

        try:
            edited = parse_arguments(form.cleaned_data["arguments"])
        except ArgumentsError as error:
            form.add_error("arguments", str(error))
            return self._render_change(request, object_id, form)
        if args_digest(obj.tool_name, edited) == obj.args_hash:
            # Not silently an APPROVE: an operator who meant to edit and did not (or whose edit was
            # undone) would run what they wanted changed. They say "Approve" if that is what they want.
            form.add_error(
                "arguments",
                "These are the proposed arguments, unchanged: edit them, "
                "or use “Approve” to run them as proposed.",
            )
            return self._render_change(request, object_id, form)
        if action == "confirm_edit":
            return self._call_service(request, obj, form, "EDIT", comment=comment, modified_args=edited)

        # "edit": check what can be checked now, then show the difference; nothing is saved yet.
        if not (obj.is_pending and obj.expires_at > timezone.now()):
            return self._conflict(request, obj, state_phrase(obj))
        try:
            validate_against_schema(obj.tool_name, edited)
        except ApplicationError as error:
            self._form_errors(form, error)
            return self._render_change(request, object_id, form)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": obj,
            "title": f"Approve {obj.tool_name} with edits?",
            "subtitle": obj.call_id,
            "diff": arguments_diff(obj.arguments, edited),
            "changed_keys": changed_keys(obj.arguments, edited),
            "edited_json": pretty_json(edited),
            # One line in the hidden field: a form field's value is safest without line breaks.
            "edited_line": json.dumps(edited, ensure_ascii=False),
            "comment": comment,
            "time_left": self.time_left(obj),
            "preserved_filters": self.get_preserved_filters(request),
        }
        return TemplateResponse(request, "admin/hitl/approvalrequest/confirm_edit.html", context)

    def _unchanged(self, obj: ApprovalRequest, text: str) -> bool:
        try:
            return args_digest(obj.tool_name, parse_arguments(text)) == obj.args_hash
        except ArgumentsError:
            return False

    def _call_service(
        self,
        request: HttpRequest,
        obj: ApprovalRequest,
        form: DecideForm,
        decision: str,
        *,
        comment: str,
        modified_args: dict[str, Any] | None = None,
    ) -> HttpResponse:
        try:
            decided = approval_decide(
                call_id=obj.call_id,
                user=request.user,  # always the signed-in operator; nothing in the form names one
                decision=decision,
                modified_args=modified_args,
                comment=comment,
                channel=DecisionChannel.ADMIN,
            )
        except ApplicationError as error:
            if error.code == "permission_denied":
                raise PermissionDenied(error.message) from None
            if error.code in CONFLICTS:
                current = ApprovalRequest.objects.filter(pk=obj.pk).first()
                return self._conflict(request, current, state_phrase(current) if current else error.message)
            self._form_errors(form, error)  # "invalid": the schema, the comment...
            return self._render_change(request, str(obj.pk), form)
        messages.success(request, f"{decided.tool_name} ({decided.call_id}): {decided.get_status_display()}.")
        return HttpResponseRedirect(self._changelist_url(request))

    def _changelist_url(self, request: HttpRequest) -> str:
        """The changelist, with the filters the operator came from."""
        url = reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist")
        context: dict[str, Any] = {
            "preserved_filters": self.get_preserved_filters(request),
            "opts": self.opts,
        }
        return add_preserved_filters(context, url)

    def _conflict(self, request: HttpRequest, obj: ApprovalRequest | None, why: str) -> HttpResponse:
        """Someone else decided first, or it expired: say so, and show the request as it now is."""
        if obj is None:
            messages.error(request, f"Nothing was saved: {why}.")
            return HttpResponseRedirect(self._changelist_url(request))
        messages.error(request, f"Nothing was saved: {obj.call_id} is {why}.")
        return HttpResponseRedirect(request.get_full_path())

    @staticmethod
    def _form_errors(form: forms.Form, error: ApplicationError) -> None:
        """The service's validation errors on the form field they concern."""
        errors = error.extra.get("errors") or [{"field": None, "message": error.message}]
        for item in errors:
            name = str(item.get("field") or "")
            root = name.split(".")[0].split("[")[0]
            field = {"modified_args": "arguments", "comment": "comment"}.get(root)
            message = str(item.get("message", ""))
            if field and name != root:
                # A nested path ("modified_args.count") tells the operator which key: keep it.
                message = f"{name.replace('modified_args', 'arguments', 1)}: {message}"
            elif not field and name:
                message = f"{name}: {message}"
            form.add_error(field, message)

    def _render_change(self, request: HttpRequest, object_id: str, form: forms.Form) -> HttpResponse:
        """The change page again, showing `form` (with its errors), as a GET renders it."""
        as_get = copy.copy(request)
        as_get.method = "GET"
        return super().change_view(as_get, object_id, extra_context={"decide_form": form})

    # Actions

    @admin.action(description="Approve selected", permissions=["decide"])
    def approve_selected(self, request: HttpRequest, queryset: QuerySet[ApprovalRequest]) -> None:
        self._decide_each(request, queryset, "APPROVE", comment="")

    @admin.action(description="Reject selected…", permissions=["decide"])
    def reject_selected(
        self, request: HttpRequest, queryset: QuerySet[ApprovalRequest]
    ) -> TemplateResponse | None:
        selected = list(queryset.order_by("created_at", "pk")[: BULK_LIMIT + 1])
        if len(selected) > BULK_LIMIT:
            messages.error(request, f"Select at most {BULK_LIMIT} requests at a time; nothing was rejected.")
            return None
        if request.POST.get("post") == "yes":  # the confirmation page's submit
            form = RejectSelectedForm(request.POST)
            if form.is_valid():
                self._decide_each(request, queryset, "REJECT", comment=form.cleaned_data["comment"])
                return None  # back to the changelist, with the report
        else:
            form = RejectSelectedForm()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Reject approval requests",
            "subtitle": None,
            "requests": selected,
            "pending_count": sum(1 for r in selected if r.is_pending),
            "form": form,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        return TemplateResponse(
            request, "admin/hitl/approvalrequest/reject_selected_confirmation.html", context
        )

    def _decide_each(
        self, request: HttpRequest, queryset: QuerySet[ApprovalRequest], decision: str, *, comment: str
    ) -> None:
        """Decide every selected request through the service, each on its own; report both outcomes."""
        call_ids = list(
            queryset.order_by("created_at", "pk").values_list("call_id", flat=True)[: BULK_LIMIT + 1]
        )
        verb = {"APPROVE": "approved", "REJECT": "rejected"}[decision]
        if len(call_ids) > BULK_LIMIT:
            messages.error(request, f"Select at most {BULK_LIMIT} requests at a time; nothing was {verb}.")
            return
        done = 0
        failures: list[str] = []
        for call_id in call_ids:
            try:
                approval_decide(
                    call_id=call_id,
                    user=request.user,
                    decision=decision,
                    comment=comment,
                    channel=DecisionChannel.ADMIN,
                )
            except ApplicationError as error:
                why = error.message
                if error.code in CONFLICTS:
                    current = ApprovalRequest.objects.filter(call_id=call_id).first()
                    why = state_phrase(current) if current is not None else "gone"
                failures.append(f"{call_id}: {why}")
            else:
                done += 1
        text = f"{done} {verb}"
        if failures:
            shown = "; ".join(failures[:10]) + (
                f"; and {len(failures) - 10} more" if len(failures) > 10 else ""
            )
            text += f"; {len(failures)} could not be: {shown}"
        level = messages.SUCCESS if not failures else messages.WARNING if done else messages.ERROR
        self.message_user(request, text + ".", level)


# Approval rules and standing approvals


class ApprovalRuleForm(forms.ModelForm):
    """The rule's fields; checked by the service (hitl.policies.rule_clean), whose 400 names the field."""

    class Meta:
        model = ApprovalRule
        fields = list(RULE_FIELDS)
        widgets = {"condition": forms.Textarea(attrs={"rows": 3, "cols": 80, "class": "vLargeTextField"})}

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        for name in ("approver_group", "escalate_to_group"):
            if cleaned.get(name) == "":
                cleaned[name] = None
        try:
            rule_clean({name: cleaned.get(name) for name in RULE_FIELDS if name in cleaned})
        except ApplicationError as error:
            for item in error.extra.get("errors") or [{"field": None, "message": error.message}]:
                field = item.get("field")
                self.add_error(field if field in self.fields else None, str(item.get("message")))
        return cleaned


class RuleTestForm(forms.Form):
    body = forms.CharField(
        label="A request body (JSON)",
        widget=forms.Textarea(attrs={"rows": 8, "cols": 80, "class": "vLargeTextField"}),
        initial='{"tool_name": "delete_records", "arguments": {"table": "users"}, "agent": "", '
        '"session_id": "s-1", "reason": ""}',
    )


def _may_change_rules(request: HttpRequest) -> bool:
    return bool(request.user.has_perm("hitl.change_approvalrule"))


@admin.register(ApprovalRule)
class ApprovalRuleAdmin(admin.ModelAdmin):
    """Rules in the order they are tried; every write goes through hitl.policies (audited, versioned)."""

    form = ApprovalRuleForm
    list_display = (
        "priority",
        "name",
        "enabled",
        "tool",
        "agent",
        "action",
        "approvals_required",
        "approver_group",
        "version",
        "test_link",
    )
    list_display_links = ("name",)
    list_filter = ("enabled", "action", "approver_group")
    search_fields = ("name", "tool", "agent")
    ordering = ("-priority", "id")
    actions = ["enable_selected", "disable_selected"]
    readonly_fields = ("version",)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_view_permission(request, obj) or _may_change_rules(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return _may_change_rules(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return _may_change_rules(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return _may_change_rules(request)

    @admin.display(description="test")
    def test_link(self, obj: ApprovalRule) -> SafeString:
        url = reverse("admin:hitl_approvalrule_test", args=[obj.pk])
        return format_html('<a href="{}">test this rule</a>', url)

    def save_model(self, request: HttpRequest, obj: ApprovalRule, form: forms.Form, change: bool) -> None:
        data = {name: form.cleaned_data.get(name) for name in RULE_FIELDS}
        for name in ("approver_group", "escalate_to_group"):
            data[name] = data[name] or None
        if change:
            saved = rule_update(rule_id=obj.pk, data=data, user=request.user)
        else:
            saved = rule_create(data=data, user=request.user)
        obj.pk, obj.version = saved.pk, saved.version

    def delete_model(self, request: HttpRequest, obj: ApprovalRule) -> None:
        rule_delete(rule_id=obj.pk, user=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ApprovalRule]) -> None:
        for pk in list(queryset.values_list("pk", flat=True)):
            rule_delete(rule_id=pk, user=request.user)

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet[ApprovalRule], enabled: bool) -> None:
        changed = 0
        for rule in queryset:
            if rule.enabled != enabled:
                rule_set_enabled(rule_id=rule.pk, enabled=enabled, user=request.user)
                changed += 1
        self.message_user(request, f"{changed} rule(s) {'enabled' if enabled else 'disabled'}.")

    @admin.action(description="Enable selected rules", permissions=["change"])
    def enable_selected(self, request: HttpRequest, queryset: QuerySet[ApprovalRule]) -> None:
        self._set_enabled(request, queryset, True)

    @admin.action(description="Disable selected rules", permissions=["change"])
    def disable_selected(self, request: HttpRequest, queryset: QuerySet[ApprovalRule]) -> None:
        self._set_enabled(request, queryset, False)

    def get_urls(self) -> list[Any]:
        from django.urls import path

        extra = [
            path(
                "<path:object_id>/test/",
                self.admin_site.admin_view(self.test_view),
                name="hitl_approvalrule_test",
            )
        ]
        return extra + super().get_urls()

    def test_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """ "Test this rule": a request body in, what this rule and the whole policy would do out."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        rule = self.get_object(request, unquote(object_id))
        if rule is None:
            raise Http404(f"no approval rule has id {object_id!r}")
        form = RuleTestForm(request.POST or None)
        result: dict[str, Any] | None = None
        if request.method == "POST" and form.is_valid():
            try:
                body = parse_json(form.cleaned_data["body"], "body")
                data = validated(PolicyProbeIn, body)
                probe = dict(
                    tool_name=data["tool_name"],
                    arguments=data["arguments"],
                    agent=data["agent"],
                    session_id=data["session_id"],
                    reason=data["reason"],
                )
                alone = evaluate([compile_rule(rule)], **probe)
                result = {
                    "this_rule_matches": alone.rule is not None,
                    "this_rule": alone.as_dict() if alone.rule is not None else None,
                    "policy": policy_dry_run(data=data),
                }
            except ApplicationError as error:
                form.add_error("body", error.message)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Test the rule {rule.label}",
            "rule": rule,
            "form": form,
            "result": result,
            "result_json": pretty_json(result) if result is not None else "",
        }
        return TemplateResponse(request, "admin/hitl/approvalrule/test_rule.html", context)


@admin.register(StandingApproval)
class StandingApprovalAdmin(admin.ModelAdmin):
    """Standing approvals: listed, and revoked through hitl.policies.standing_revoke."""

    list_display = (
        "id",
        "tool_name",
        "scope",
        "scope_value",
        "created_by_username",
        "created_at",
        "expires_at",
        "revoked_at",
    )
    list_filter = ("scope", "revoked_at")
    search_fields = ("tool_name", "scope_value", "source_call_id")
    readonly_fields = [f.name for f in StandingApproval._meta.fields]
    actions = ["revoke_selected"]

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_view_permission(request, obj) or user_may_decide(request.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # made by a decision's `remember`

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return user_may_decide(request.user)

    @admin.action(description="Revoke selected standing approvals", permissions=["revoke"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[StandingApproval]) -> None:
        revoked = 0
        for pk in list(queryset.filter(revoked_at__isnull=True).values_list("pk", flat=True)):
            standing_revoke(standing_id=pk, user=request.user)
            revoked += 1
        self.message_user(request, f"{revoked} standing approval(s) revoked.", messages.SUCCESS)
