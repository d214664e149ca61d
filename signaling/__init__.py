"""forumcast signaling."""
