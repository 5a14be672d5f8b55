"""`python app.py` starts SDAR Studio (also the Hugging Face Spaces entry point): app/launch.py.

python app.py [--model assets/models/sdar-tiny] [--host 127.0.0.1] [--port 7860] [--share] [--allow-any-model]
"""

from app.launch import exposed, main  # noqa: F401  (exposed: the studio's exposure rule, read by the tests)

if __name__ == "__main__":
    main()
