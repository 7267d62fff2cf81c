"""Annotator statistics for the admin dashboard: throughput, agreement, and how often a
blind label changed once the hints were revealed."""

import statistics
from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.db.models import Label, Project, User


def annotator_stats(session: Session, project: Project) -> dict:
    labels = session.execute(
        select(Label, User.username)
        .join(User, User.id == Label.user_id)
        .where(Label.project_id == project.id, Label.retracted_at.is_(None))
        .order_by(Label.created_at, Label.id)
    ).all()

    per_user: dict[str, list[Label]] = defaultdict(list)
    for label, username in labels:
        per_user[username].append(label)
    annotators = []
    for username, given in sorted(per_user.items()):
        # time spent = lease-to-label durations; throughput = labels per hour of that time
        seconds = [label.duration_ms / 1000 for label in given if label.duration_ms is not None]
        annotators.append(
            {
                "username": username,
                "labels": len(given),
                "labels_per_hour": round(3600 * len(seconds) / sum(seconds), 1) if seconds and sum(seconds) > 0 else None,
                "median_seconds": round(statistics.median(seconds), 2) if seconds else None,
            }
        )

    # Agreement: each annotator's latest answer per cell, for cells two or more annotators labeled.
    latest: dict[int, dict[str, int]] = defaultdict(dict)
    for label, username in labels:
        latest[label.image_id][username] = label.class_id
    pairs = [tuple(list(answers.values())[:2]) for answers in latest.values() if len(answers) >= 2]
    agreement: dict[str, int | float | None] = {
        "cells_labeled_twice": len(pairs),
        "percent_agreement": None,
        "cohen_kappa": None,
    }
    if pairs:
        first, second = zip(*pairs)
        agreement["percent_agreement"] = round(100 * sum(a == b for a, b in pairs) / len(pairs), 1)
        if len(set(first) | set(second)) > 1:
            from sklearn.metrics import cohen_kappa_score

            # raters differ from cell to cell: the kappa of "first vs second answer given"
            agreement["cohen_kappa"] = round(float(cohen_kappa_score(first, second)), 3)

    # Label first, then reveal: a blind label superseded by the same annotator's answer after the reveal.
    blind = {(label.image_id, label.user_id): label for label, _ in labels if not label.hints_seen}
    revised = [
        (blind[(label.image_id, label.user_id)], label)
        for label, _ in labels
        if label.hints_seen
        and (label.image_id, label.user_id) in blind
        and label.created_at >= blind[(label.image_id, label.user_id)].created_at
    ]
    return {
        "annotators": annotators,
        "agreement": agreement,
        "reveal": {"n": len(revised), "changed": sum(before.class_id != after.class_id for before, after in revised)},
    }
