from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildWithDemo(build_py):
    """The demo (procs/demo.ini and its handlers) goes into the wheel as janustls/demo/, so that
    `janustls demo` runs where no checkout is; its PKI is written where it is run.  (A mapped
    package would turn `pip install -e .` into a finder-based install that hides twisted/plugins.)"""

    DEMO = ("demo.ini", "echo.py", "whoami.py")

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "janustls" / "demo"
        self.mkpath(str(target))
        for name in self.DEMO:
            self.copy_file(str(Path("procs") / name), str(target / name))


setup(
    name="janustls",
    version="0.1.0",
    description="A programmable mutual-TLS server framework on Twisted, after the Janus SSL ports.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",  # the version the tests run on
    # package_dir "" = "." makes `pip install -e .` put the checkout itself on sys.path,
    # where Twisted looks for twisted/plugins/ (a finder-based editable install hides it).
    package_dir={"": "."},
    packages=find_packages(include=["janustls", "janustls.*"]) + ["twisted.plugins"],
    package_data={"janustls": ["py.typed"]},
    cmdclass={"build_py": BuildWithDemo},
    include_package_data=False,
    install_requires=[
        "twisted>=24.7,<27",
        "pyopenssl>=25.2,<27",
        "cryptography>=45,<51",
        "service-identity>=24.1,<27",
        "zope.interface>=6.0,<9",
        "prometheus-client>=0.20,<1",
        "httptools>=0.6.4,<0.10",  # llhttp: the HTTP/1.1 parser of web ports
        "wsproto>=1.2,<2",  # WebSocket framing for asgi websocket scopes
        "h2>=4.1,<5",  # HTTP/2 of web ports with http2 = yes (janustls.ports.web.h2channel)
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-timeout>=2.3",
            "build>=1.0",
            "twine>=5.0",
            # ASGI apps the web tests serve (asgi rules need nothing beyond Twisted's asyncio reactor)
            "starlette>=1.10,<2",
            "fastapi>=0.165,<1",
            # a WebSocket client, and uvicorn as a forward backend serving a FastAPI WebSocket
            "websockets>=15,<18",
            "uvicorn>=0.30,<1",
            # the checkers .ci/run runs before the tests, pinned so a new release cannot fail CI
            # (mypy-zope: zope.interface's plugin; it follows mypy's releases)
            "mypy==2.4.1",
            "mypy-zope==1.0.17",
            "ruff==0.17.6",
        ],
    },
    entry_points={"console_scripts": ["janustls = janustls.cli:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Security :: Cryptography",
        "Typing :: Typed",
    ],
)
