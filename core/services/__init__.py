"""What the pages call: background jobs and their job functions, predict, thumbnails, display views."""
