"""forumcast streaming."""
