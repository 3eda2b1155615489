"""The hitl app's permissions, named once."""

VIEW_APPROVALS = "hitl.view_approvalrequest"  # operators: the queue, the page, the API's list
DECIDE_APPROVALS = "hitl.decide_approvalrequest"  # operators: approve, edit, reject
REQUEST_APPROVAL = "hitl.request_approval"  # agents: ask, wait, cancel their own
