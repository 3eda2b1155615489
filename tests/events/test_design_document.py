"""Every example of the design document, as written, with `app.events` read as `events`.

The examples of the distributed bus and the event store belong to their own issues and are tested there.
"""

import logging
import uuid
from datetime import datetime

import pytest

from audit.subscribers import audit_logger, metrics_collector
from events.agent_events import (
    AgentErrorOccurredEvent,
    AgentProcessingCompletedEvent,
    AgentProcessingStartedEvent,
    AgentSwitchedEvent,
)
from events.event_bus import event_bus
from events.event_store import event_store
from events.event_types import EventCategory, EventType
from events.session_events import MessageAddedEvent, SessionCreatedEvent
from events.tool_events import HITLDecisionMadeEvent, ToolApprovalRequiredEvent, ToolExecutionRequestedEvent

logger = logging.getLogger("events")


async def test_event_bus_usage_example(capsys):
    # Подписка на конкретный тип события
    @event_bus.subscribe(event_type=EventType.AGENT_SWITCHED)
    async def on_agent_switched(event):
        print(f"Агент переключен: {event.data}")

    # Подписка на категорию событий
    @event_bus.subscribe(event_category=EventCategory.AGENT)
    async def on_any_agent_event(event):
        print(f"Событие агента: {event.event_type}")

    # Публикация события
    await event_bus.publish(
        AgentSwitchedEvent(
            session_id="session-123",
            from_agent="orchestrator",
            to_agent="coder",
            reason="Требуется модификация кода",
        )
    )
    await event_bus.drain()
    out = capsys.readouterr().out
    assert "Агент переключен: {'from_agent': 'orchestrator', 'to_agent': 'coder'" in out
    assert "Событие агента: agent_switched" in out


async def test_event_type_examples_build_and_publish():
    event = AgentSwitchedEvent(
        session_id="session-123",
        from_agent="orchestrator",
        to_agent="coder",
        reason="Требуется написание кода",
        confidence="high",
    )
    await event_bus.publish(event)
    examples = [
        AgentProcessingStartedEvent(
            session_id="session-123", agent_type="coder", message="Создай функцию сортировки"
        ),
        AgentProcessingCompletedEvent(
            session_id="session-123", agent_type="coder", duration_ms=1500.5, success=True
        ),
        AgentErrorOccurredEvent(
            session_id="session-123",
            agent_type="coder",
            error_message="File not found",
            error_type="FileNotFoundError",
        ),
        ToolExecutionRequestedEvent(
            session_id="session-123",
            tool_name="write_file",
            arguments={"path": "test.py", "content": "..."},
            call_id="call-456",
            agent="coder",
        ),
        ToolApprovalRequiredEvent(
            session_id="session-123",
            tool_name="execute_command",
            arguments={"command": "rm -rf /tmp"},
            call_id="call-456",
            reason="Опасная команда",
        ),
        HITLDecisionMadeEvent(
            session_id="session-123",
            call_id="call-456",
            decision="APPROVE",  # APPROVE, EDIT, REJECT
            tool_name="write_file",
            original_args={"path": "test.py"},
            modified_args=None,
        ),
        SessionCreatedEvent(session_id="session-123", system_prompt="You are a helpful assistant"),
        MessageAddedEvent(session_id="session-123", role="user", content_length=100, agent_name="coder"),
    ]
    for example in examples:
        await event_bus.publish(example)
    await event_bus.drain()
    assert event_bus.get_stats().total_published == 9
    assert event.data["from_agent"] == "orchestrator" and event.data["confidence"] == "high"


def test_the_documented_structure_of_an_event():
    payload = AgentSwitchedEvent(session_id="session-123", from_agent="a", to_agent="b").to_dict()
    assert set(payload) == {
        "event_id",
        "event_type",
        "event_category",
        "timestamp",
        "session_id",
        "correlation_id",
        "causation_id",
        "data",
        "source",
        "version",
    }
    assert uuid.UUID(payload["event_id"]) and payload["timestamp"].endswith("Z")


def test_categories():
    assert [
        EventCategory.AGENT,
        EventCategory.SESSION,
        EventCategory.TOOL,
        EventCategory.HITL,
        EventCategory.SYSTEM,
        EventCategory.METRICS,
    ] == ["agent", "session", "tool", "hitl", "system", "metrics"]


@pytest.mark.django_db(transaction=True)
async def test_metrics_collector_and_audit_logger_examples():
    await event_bus.publish(
        AgentSwitchedEvent(session_id="session-123", from_agent="orchestrator", to_agent="coder"),
        wait_for_handlers=True,
    )
    first = max(event_bus.subscriptions, key=lambda sub: sub.priority)
    assert getattr(first.handler, "__self__", None) is event_store  # the store runs first
    # Получить все метрики
    metrics = metrics_collector.get_metrics()
    assert set(metrics) == {"agent_switches", "agent_processing", "tool_executions", "hitl_decisions"}
    assert metrics["agent_switches"] == {"orchestrator_to_coder": 1}
    # Получить audit log
    log = audit_logger.get_audit_log(session_id="session-123", event_type="agent_switched", limit=10)
    assert [entry["data"]["to_agent"] for entry in log] == ["coder"]


async def test_custom_subscriber_example(capsys):
    class CustomSubscriber:
        """Пользовательский подписчик."""

        def __init__(self):
            self._setup_subscriptions()

        def _setup_subscriptions(self):
            """Настройка подписок."""
            event_bus.subscribe(
                event_type=EventType.AGENT_SWITCHED, handler=self._on_agent_switched, priority=5
            )

            event_bus.subscribe(event_category=EventCategory.TOOL, handler=self._on_tool_event, priority=3)

        async def _on_agent_switched(self, event):
            """Обработчик переключения агента."""
            print(f"Агент переключен: {event.data['from_agent']} → {event.data['to_agent']}")

        async def _on_tool_event(self, event):
            """Обработчик событий инструментов."""
            print(f"Событие инструмента: {event.event_type}")

    custom_subscriber = CustomSubscriber()
    assert custom_subscriber
    await event_bus.publish(
        AgentSwitchedEvent(from_agent="orchestrator", to_agent="coder"), wait_for_handlers=True
    )
    await event_bus.publish(ToolExecutionRequestedEvent(tool_name="ls", call_id="c"), wait_for_handlers=True)
    out = capsys.readouterr().out
    assert "Агент переключен: orchestrator → coder" in out
    assert "Событие инструмента: tool_execution_requested" in out


async def test_middleware_examples(caplog):
    # Middleware для валидации событий
    async def validate_event_middleware(event):
        if not event.session_id:
            logger.warning(f"Событие {event.event_type} без session_id")
        return event

    # Middleware для обогащения событий
    async def enrich_event_middleware(event):
        event.data["enriched_at"] = datetime.utcnow().isoformat()  # noqa: DTZ003 - as the document writes it
        return event

    # Middleware для фильтрации событий
    async def filter_test_events_middleware(event):
        if event.session_id and event.session_id.startswith("test-"):
            return None  # Отменить тестовые события
        return event

    event_bus.add_middleware(validate_event_middleware)
    event_bus.add_middleware(enrich_event_middleware)
    event_bus.add_middleware(filter_test_events_middleware)

    received = []
    event_bus.subscribe(handler=received.append)
    with caplog.at_level(logging.WARNING, logger="events"):
        await event_bus.publish(SessionCreatedEvent(), wait_for_handlers=True)
        await event_bus.publish(SessionCreatedEvent(session_id="test-1"), wait_for_handlers=True)
        await event_bus.publish(SessionCreatedEvent(session_id="real"), wait_for_handlers=True)
    assert "Событие session_created без session_id" in caplog.text
    assert [e.session_id for e in received] == [None, "real"]
    assert all("enriched_at" in e.data for e in received)
    assert event_bus.get_stats().total_dropped == 1


async def test_correlation_id_example():
    correlation_id = str(uuid.uuid4())
    traced = []
    event_bus.subscribe(handler=lambda e: traced.append(e) if e.correlation_id == correlation_id else None)
    # Первое событие
    await event_bus.publish(AgentSwitchedEvent(from_agent="a", to_agent="b", correlation_id=correlation_id))
    # Связанное событие
    await event_bus.publish(
        ToolExecutionRequestedEvent(tool_name="t", call_id="c", correlation_id=correlation_id)
    )
    await event_bus.drain()
    assert [e.event_type for e in traced] == ["agent_switched", "tool_execution_requested"]


async def test_priority_example():
    order = []

    @event_bus.subscribe(event_type=EventType.AGENT_SWITCHED, priority=10)
    async def critical_handler(event):
        order.append("critical")

    @event_bus.subscribe(event_type=EventType.AGENT_SWITCHED, priority=5)
    async def normal_handler(event):
        order.append("normal")

    @event_bus.subscribe(event_type=EventType.AGENT_SWITCHED, priority=0)
    async def low_priority_handler(event):
        order.append("low")

    await event_bus.publish(AgentSwitchedEvent(from_agent="a", to_agent="b"), wait_for_handlers=True)
    assert order == ["critical", "normal", "low"]


async def test_error_handling_and_wait_for_handlers_best_practices():
    errors = []

    async def do_something(event):
        raise OSError("disk gone")

    @event_bus.subscribe(event_type=EventType.AGENT_SWITCHED)
    async def my_handler(event):
        try:
            await do_something(event)
        except Exception as e:
            logger.error(f"Ошибка в обработчике: {e}")
            errors.append(e)
            # Не пробрасывайте исключение

    event = AgentSwitchedEvent(from_agent="a", to_agent="b")
    # Для критичных операций
    await event_bus.publish(event, wait_for_handlers=True)
    assert len(errors) == 1
    # Для fire-and-forget (по умолчанию)
    await event_bus.publish(event)
    await event_bus.drain()
    assert len(errors) == 2


def test_serialisable_data_best_practice():
    from events.base import BaseEvent

    # ✅ Хорошо
    data = {"count": 5, "name": "test", "items": ["a", "b"]}
    assert BaseEvent("custom", "system", data=data).data == data
    # ❌ Плохо
    some_complex_object = object()
    with pytest.raises(TypeError, match="object"):
        BaseEvent("custom", "system", data={"object": some_complex_object})


async def test_monitoring_example(capsys):
    event_bus.subscribe(handler=lambda e: None)
    await event_bus.publish(SessionCreatedEvent(), wait_for_handlers=True)
    stats = event_bus.get_stats()
    print(f"Всего опубликовано: {stats.total_published}")
    print(f"Успешных обработчиков: {stats.successful_handlers}")
    print(f"Неудачных обработчиков: {stats.failed_handlers}")
    assert (
        capsys.readouterr().out
        == "Всего опубликовано: 1\nУспешных обработчиков: 1\nНеудачных обработчиков: 0\n"
    )


async def test_debug_logging(caplog):
    logging.getLogger("events").setLevel(logging.DEBUG)
    try:
        event_bus.add_middleware(lambda e: None)
        with caplog.at_level(logging.DEBUG, logger="events"):
            await event_bus.publish(SessionCreatedEvent())
        assert "dropped by middleware" in caplog.text
    finally:
        logging.getLogger("events").setLevel(logging.INFO)
