"""The run folder: its layout and status, where an unfinished run resumes, and what a folder of runs holds."""
