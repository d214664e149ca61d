"""forumcast config."""
