; Inno Setup script: MetaScope installer for Windows (64-bit), one per flavour.
;
; Steps on the Windows release machine (Python 3.11 x64, Inno Setup 6 on PATH as ISCC.exe):
;   py -3.11 -m venv .venv
;   .venv\Scripts\pip install -e ".[build]"
;   .venv\Scripts\python build\make_installer.py --flavour all       (writes build\out\metascope.ico too)
;   build\out\viewer\metascope\metascope-cli.exe selftest               (must print "self-test passed")
;   ISCC.exe /DFlavour=viewer /DAppVersion=0.1.0 build\windows\metascope.iss
;   ISCC.exe /DFlavour=full   /DAppVersion=0.1.0 build\windows\metascope.iss
; AppVersion must equal engine.__version__ (python -c "import engine; print(engine.__version__)").
; Output: build\out\MetaScope-<version>-<flavour>-setup.exe
;
; The bundle (build\out\<flavour>\metascope\) holds MetaScope.exe (windowed: Start menu, file
; associations) and metascope-cli.exe (console: `metascope-cli selftest`, `metascope-cli heatmap ...`),
; sharing one _internal\ folder. The installer is per-user by default (no admin rights needed on a
; locked-down lab PC) and offers an all-users install when run as administrator.
; Sign MetaScope.exe, metascope-cli.exe and the setup .exe with the lab's code-signing certificate
; (signtool) before distribution; unsigned installers trigger SmartScreen warnings.

#ifndef Flavour
  #define Flavour "viewer"
#endif
#ifndef AppVersion
  #error Pass /DAppVersion=<engine.__version__>
#endif

#define AppName "MetaScope"
#define BundleDir "..\out\" + Flavour + "\metascope"

[Setup]
; A fixed AppId per flavour lets an upgrade replace the previous install of the same flavour.
#if Flavour == "full"
AppId={{6C3E3E0B-6C7B-4B7E-9C55-3A2F7D1F8A11}
#else
AppId={{0F4B9A56-2D1C-4E0B-8F2B-7E5D9C3A6B22}
#endif
AppName={#AppName}
AppVersion={#AppVersion}
AppVerName={#AppName} {#AppVersion} ({#Flavour})
AppPublisher=MetaScope developers
DefaultDirName={autopf}\{#AppName}
DefaultGroupName={#AppName}
DisableProgramGroupPage=yes
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
OutputDir=..\out
OutputBaseFilename=MetaScope-{#AppVersion}-{#Flavour}-setup
SetupIconFile=..\out\metascope.ico
UninstallDisplayIcon={app}\MetaScope.exe
Compression=lzma2/max
SolidCompression=yes
WizardStyle=modern
ChangesAssociations=yes

[Languages]
Name: "english"; MessagesFile: "compiler:Default.isl"

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"
Name: "associate"; Description: "Open .svs, .ndpi, .mrxs and .scn slides with {#AppName}"; GroupDescription: "File types:"

[Files]
Source: "{#BundleDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{group}\{#AppName}"; Filename: "{app}\MetaScope.exe"
Name: "{group}\{#AppName} self-test"; Filename: "{cmd}"; Parameters: "/k ""{app}\metascope-cli.exe"" selftest"
Name: "{autodesktop}\{#AppName}"; Filename: "{app}\MetaScope.exe"; Tasks: desktopicon

[Registry]
; Per-user or per-machine classes root, following the install mode ({autopf} above).
Root: HKA; Subkey: "Software\Classes\MetaScope.Slide"; ValueType: string; ValueData: "Whole-slide image"; Flags: uninsdeletekey; Tasks: associate
Root: HKA; Subkey: "Software\Classes\MetaScope.Slide\DefaultIcon"; ValueType: string; ValueData: "{app}\MetaScope.exe,0"; Tasks: associate
Root: HKA; Subkey: "Software\Classes\MetaScope.Slide\shell\open\command"; ValueType: string; ValueData: """{app}\MetaScope.exe"" ""%1"""; Tasks: associate
Root: HKA; Subkey: "Software\Classes\.svs\OpenWithProgids"; ValueType: string; ValueName: "MetaScope.Slide"; ValueData: ""; Flags: uninsdeletevalue; Tasks: associate
Root: HKA; Subkey: "Software\Classes\.ndpi\OpenWithProgids"; ValueType: string; ValueName: "MetaScope.Slide"; ValueData: ""; Flags: uninsdeletevalue; Tasks: associate
Root: HKA; Subkey: "Software\Classes\.mrxs\OpenWithProgids"; ValueType: string; ValueName: "MetaScope.Slide"; ValueData: ""; Flags: uninsdeletevalue; Tasks: associate
Root: HKA; Subkey: "Software\Classes\.scn\OpenWithProgids"; ValueType: string; ValueName: "MetaScope.Slide"; ValueData: ""; Flags: uninsdeletevalue; Tasks: associate

[Run]
Filename: "{app}\MetaScope.exe"; Description: "{cm:LaunchProgram,{#AppName}}"; Flags: nowait postinstall skipifsilent
