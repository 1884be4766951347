"""Every page of the portal, gathered for the app factory: the core pages (login, overview,
where my data is, history) and each part's own module."""
from __future__ import annotations

from fastapi import APIRouter

from portal import history_views, notice_views, people_views, policy_views, process_views, views

router = APIRouter()
for part in (views, history_views, notice_views, policy_views, people_views, process_views):
    router.include_router(part.router)
