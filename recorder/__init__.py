"""forumcast recorder."""
