// Every subpackage ships one small page (whether a subpackage may have none is unverified).
Page({});
