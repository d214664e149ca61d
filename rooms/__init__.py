"""forumcast rooms."""
